"""The control socket's file (modes, stale and live sockets, paths) and `connection_closed`,
over real Unix sockets in short temp paths.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
from collections import Counter
from pathlib import Path

import pytest
from control_harness import (
    FakeHandler,
    Peer,
    error_of,
    run,
    serving,
    until,
)

from lmkeeperd.control.server import SOCKET_PATH_MAX, ControlServer
from lmkeeperd.errors import (
    DaemonError,
    SocketInUse,
)

# --- the socket file ----------------------------------------------------------------------


def test_socket_is_0600_and_created_folders_0700_whatever_the_umask(folder: Path) -> None:
    async def scenario() -> None:
        path = folder / "run" / "lmk" / "s.sock"
        server = ControlServer(path, FakeHandler())
        old = os.umask(0)
        try:
            await server.start()
        finally:
            umask_during_test = os.umask(old)
        try:
            assert umask_during_test == 0  # start() put the umask back
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(folder / "run").st_mode) == 0o700
            assert stat.S_IMODE(os.stat(folder / "run" / "lmk").st_mode) == 0o700
        finally:
            await server.close()

    run(scenario())


def test_an_existing_folder_keeps_its_mode(folder: Path) -> None:
    async def scenario() -> None:
        os.chmod(folder, 0o755)
        async with serving(folder) as _:
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755

    run(scenario())


def test_a_path_too_long_is_refused_with_its_length_and_the_limit(folder: Path) -> None:
    async def scenario() -> None:
        deep = folder / ("d" * 60) / ("e" * 60)
        path = deep / "s.sock"
        length = len(os.fsencode(path))
        with pytest.raises(DaemonError) as caught:
            await ControlServer(path, FakeHandler()).start()
        message = str(caught.value)
        assert str(path) in message
        assert f"{length} bytes" in message
        assert f"at most {SOCKET_PATH_MAX}" in message
        assert "[control] socket" in message
        assert not deep.parent.exists()  # nothing was created

    run(scenario())


def test_a_stale_socket_from_a_crashed_daemon_is_replaced(folder: Path) -> None:
    async def scenario() -> None:
        path = folder / "s.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(str(path))  # bound, never listening, closed: what a crash leaves
        async with serving(folder) as _:
            peer = await Peer.connect(path)
            assert (await peer.ask({"op": "status"}))["ok"] is True
            await peer.close()

    run(scenario())


def test_a_live_socket_is_not_taken_over(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            with pytest.raises(SocketInUse) as caught:
                await ControlServer(folder / "s.sock", FakeHandler()).start()
            message = str(caught.value)
            assert f"another lmkeeperd is already running on {folder / 's.sock'}" in message
            if sys.platform.startswith("linux"):
                assert f"(pid {os.getpid()})" in message
            peer = await Peer.connect(folder / "s.sock")
            assert (await peer.ask({"op": "status"}))["ok"] is True
            await peer.close()

    run(scenario())


@pytest.mark.parametrize("kind", ["file", "symlink", "folder"])
def test_a_path_that_is_not_a_socket_is_left_untouched(folder: Path, kind: str) -> None:
    async def scenario() -> None:
        path = folder / "s.sock"
        target = folder / "precious.txt"
        target.write_text("user data")
        if kind == "file":
            path.write_text("user data")
        elif kind == "symlink":
            path.symlink_to(target)
        else:
            path.mkdir()
        with pytest.raises(DaemonError, match="exists and is not a socket") as caught:
            await ControlServer(path, FakeHandler()).start()
        assert not isinstance(caught.value, SocketInUse)
        assert target.read_text() == "user data"
        if kind == "file":
            assert path.read_text() == "user data"
        elif kind == "symlink":
            assert path.is_symlink()
        else:
            assert path.is_dir()

    run(scenario())


def test_close_removes_the_socket_file_and_ends_connections(folder: Path) -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        server = ControlServer(folder / "s.sock", handler)
        await server.start()
        peer = await Peer.connect(folder / "s.sock")
        assert (await peer.ask({"op": "status"}))["ok"] is True
        await server.close()
        assert not (folder / "s.sock").exists()
        assert await peer.rest_until_closed() == b""
        assert handler.closed == [1]
        assert server.connections == 0
        await peer.close()
        await server.close()  # idempotent

    run(scenario())


def test_close_leaves_a_socket_file_that_is_no_longer_ours(folder: Path) -> None:
    async def scenario() -> None:
        server = ControlServer(folder / "s.sock", FakeHandler())
        await server.start()
        os.unlink(folder / "s.sock")
        (folder / "s.sock").write_text("someone else's")
        await server.close()
        assert (folder / "s.sock").read_text() == "someone else's"

    run(scenario())


# --- connection_closed ----------------------------------------------------------------------


def test_connection_closed_is_called_exactly_once_for_every_connection(folder: Path) -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        handler.gate = asyncio.Event()
        async with serving(folder, handler) as (server, _):
            path = folder / "s.sock"
            clean = await Peer.connect(path)
            assert (await clean.ask({"op": "status"}))["ok"] is True
            await clean.close()

            mid_line = await Peer.connect(path)
            await mid_line.send(b'{"op":"sta')
            await mid_line.close()

            reset = await Peer.connect(path)
            await reset.send(b'{"op":"activ')
            reset.writer.transport.abort()

            subscriber = await Peer.connect(path)
            assert await subscriber.ask({"op": "subscribe"}) == {"ok": True}
            await subscriber.close()

            garbled = await Peer.connect(path)
            assert error_of(await garbled.ask(b"[]\n"))
            await garbled.close()

            pending = await Peer.connect(path)
            await pending.send({"op": "unload"})
            await until(lambda: len(handler.requests) == 2, "the unload to reach the handler")
            await pending.close()

            await until(lambda: len(handler.closed) == 5, "five connections to end")
            handler.gate.set()  # the pending unload's reply goes nowhere, and ends
            await until(lambda: len(handler.closed) == 6, "the pending connection to end")

            open_at_close = await Peer.connect(path)
            assert (await open_at_close.ask({"op": "status"}))["ok"] is True
            await until(lambda: server.connections == 1, "only one connection left")
        # leaving `serving` closed the server, which ended the last connection
        await open_at_close.close()
        assert Counter(handler.closed) == Counter(range(1, 8))

    run(scenario())
