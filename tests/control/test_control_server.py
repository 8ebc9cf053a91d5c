"""The control socket server and client over real Unix sockets in short temp paths.

The request handler here is a small fake: these tests are about the socket, framing, peer
checks and subscriptions, not about what the daemon answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.control import client
from lmkeeperd.control.protocol import (
    MAX_LINE,
    Request,
    Select,
    Status,
    StreamStart,
    Unload,
)
from lmkeeperd.control.server import SOCKET_PATH_MAX, Connection, ControlServer
from lmkeeperd.errors import (
    DaemonError,
    DaemonNotRunning,
    ModelNotFound,
    ProtocolError,
    SocketInUse,
)

T = TypeVar("T")
WAIT_S = 5.0

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux peer creds")


class FakeHandler:
    """Answers every op plainly; records what it saw. `gate` holds `unload` replies back."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, Request]] = []
        self.closed: list[int] = []
        self.gate: asyncio.Event | None = None
        self._streams = 0

    async def handle(self, conn: Connection, request: Request) -> dict[str, Any]:
        self.requests.append((conn.id, request))
        match request:
            case Select(model="boom"):
                raise ModelNotFound("LM Studio has no model named boom")
            case Select(model="crash"):
                raise RuntimeError("bug in the handler")
            case Select(model="not-json"):
                return {"ok": True, "value": float("nan")}
            case Select(model=model):
                return {"ok": True, "model": model}
            case StreamStart():
                self._streams += 1
                return {"ok": True, "stream": self._streams}
            case Unload() if self.gate is not None:
                await self.gate.wait()
                return {"ok": True}
            case Status():
                return {
                    "ok": True,
                    "status": {"conn": conn.id, "uid": conn.peer_uid, "pid": conn.peer_pid},
                }
            case _:
                return {"ok": True}

    def connection_closed(self, conn: Connection) -> None:
        self.closed.append(conn.id)


class Peer:
    """An asyncio client speaking raw lines, for driving the server from the same loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path) -> Peer:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * MAX_LINE)
        return cls(reader, writer)

    async def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), WAIT_S)
        assert line.endswith(b"\n"), f"connection ended instead of replying: {line!r}"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def ask(self, data: bytes | dict[str, Any]) -> dict[str, Any]:
        await self.send(data)
        return await self.reply()

    async def rest_until_closed(self) -> bytes:
        """Everything the server still sends, returned once it closes the connection."""
        try:
            return await asyncio.wait_for(self.reader.read(), WAIT_S)
        except ConnectionResetError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool], what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def serving(
    folder: Path, handler: FakeHandler | None = None, **options: Any
) -> AsyncIterator[tuple[ControlServer, FakeHandler]]:
    handler = handler or FakeHandler()
    server = ControlServer(folder / "s.sock", handler, **options)
    await server.start()
    try:
        yield server, handler
    finally:
        await server.close()


@pytest.fixture
def folder() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108-byte limit of a socket path.
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="lk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def error_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, str)
    return error


# --- requests and replies -------------------------------------------------------------------


def test_each_op_goes_through_the_handler_and_back(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (_server, handler):
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "select", "model": "m1"}) == {"ok": True, "model": "m1"}
            assert await peer.ask({"op": "activity"}) == {"ok": True}
            assert await peer.ask({"op": "stream_start"}) == {"ok": True, "stream": 1}
            assert await peer.ask({"op": "stream_end", "stream": 1}) == {"ok": True}
            assert await peer.ask({"op": "stream_end"}) == {"ok": True}
            assert await peer.ask({"op": "engine", "name": "lmstudio"}) == {"ok": True}
            assert await peer.ask({"op": "unload"}) == {"ok": True}
            assert await peer.ask({"op": "unload", "model": "m2"}) == {"ok": True}
            status = await peer.ask({"op": "status"})
            assert status["ok"] is True
            await peer.close()
            ops = [request.op for _conn, request in handler.requests]
            assert ops == [
                "select",
                "activity",
                "stream_start",
                "stream_end",
                "stream_end",
                "engine",
                "unload",
                "unload",
                "status",
            ]
            assert {conn for conn, _ in handler.requests} == {status["status"]["conn"]}

    run(scenario())


def test_pipelined_requests_get_their_replies_in_order(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            batch = b"".join(
                json.dumps({"op": "select", "model": f"m{i}"}).encode() + b"\n" for i in range(200)
            )
            await peer.send(batch)
            replies = [await peer.reply() for _ in range(200)]
            assert [r["model"] for r in replies] == [f"m{i}" for i in range(200)]
            await peer.close()

    run(scenario())


def test_a_slow_request_does_not_hold_up_other_connections(folder: Path) -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        handler.gate = asyncio.Event()
        async with serving(folder, handler) as _:
            slow = await Peer.connect(folder / "s.sock")
            other = await Peer.connect(folder / "s.sock")
            await slow.send({"op": "unload"})
            await until(lambda: len(handler.requests) == 1, "the unload to reach the handler")
            assert (await other.ask({"op": "status"}))["ok"] is True
            handler.gate.set()
            assert await slow.reply() == {"ok": True}
            await slow.close()
            await other.close()

    run(scenario())


def test_handler_errors_are_replied_and_the_connection_stays_open(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            with structlog.testing.capture_logs() as logs:
                refused = await peer.ask({"op": "select", "model": "boom"})
                crashed = await peer.ask({"op": "select", "model": "crash"})
                unencodable = await peer.ask({"op": "select", "model": "not-json"})
            assert error_of(refused) == "LM Studio has no model named boom"
            assert "internal error while handling select" in error_of(crashed)
            assert "internal error" in error_of(unencodable)
            errors = [e for e in logs if e["event"] == "control_error"]
            assert len(errors) == 2
            assert all(isinstance(e["conn"], int) for e in errors)
            assert (await peer.ask({"op": "status"}))["ok"] is True
            await peer.close()

    run(scenario())


# --- framing ------------------------------------------------------------------------------


def test_request_errors_get_a_reply_and_the_connection_stays_open(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (_server, handler):
            peer = await Peer.connect(folder / "s.sock")
            assert error_of(await peer.ask({"op": "foo"})).startswith('unknown op "foo"')
            assert error_of(await peer.ask({"op": "select"})) == 'select: missing field "model"'
            assert "must be a string" in error_of(await peer.ask({"op": "select", "model": 1}))
            assert error_of(await peer.ask({"model": "x"})).startswith('missing field "op"')
            assert (await peer.ask({"op": "status"}))["ok"] is True
            assert [r.op for _, r in handler.requests] == ["status"]
            await peer.close()

    run(scenario())


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"[1,2]\n", "expected a JSON object, got array"),
        (b'"status"\n', "expected a JSON object, got string"),
        (b"null\n", "expected a JSON object, got null"),
        (b"{not json}\n", "invalid JSON"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"\n", "invalid JSON"),
        (b"[" * 60_000 + b"\n", "invalid JSON"),
        (b'{"op":"status","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", "nested too deeply"),
    ],
)
def test_frames_that_are_not_json_objects_get_an_error_and_are_closed(
    folder: Path, frame: bytes, error: str
) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            assert error in error_of(await peer.ask(frame + b'{"op":"status"}\n'))
            assert await peer.rest_until_closed() == b""
            await peer.close()
            fresh = await Peer.connect(folder / "s.sock")
            assert (await fresh.ask({"op": "status"}))["ok"] is True
            await fresh.close()

    run(scenario())


def test_a_line_over_64_kib_gets_an_error_and_is_closed_others_are_unaffected(
    folder: Path,
) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            bystander = await Peer.connect(folder / "s.sock")
            at_limit = b'{"op":"status"}'.ljust(MAX_LINE) + b"\n"
            assert (await bystander.ask(at_limit))["ok"] is True

            for oversized in (b"x" * (MAX_LINE + 1), b'{"op":"status"}'.ljust(MAX_LINE + 1)):
                peer = await Peer.connect(folder / "s.sock")
                reply = await peer.ask(oversized + b"\n")
                assert error_of(reply) == "line too long (limit 65536 bytes)"
                assert await peer.rest_until_closed() == b""
                await peer.close()

            assert (await bystander.ask({"op": "status"}))["ok"] is True
            await bystander.close()

    run(scenario())


def test_a_line_without_end_beyond_64_kib_is_refused_before_it_ends(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            await peer.send(b"y" * (MAX_LINE + 1))  # no newline: the server must not wait
            assert error_of(await peer.reply()).startswith("line too long")
            await peer.close()

    run(scenario())


# --- peers --------------------------------------------------------------------------------


@linux_only
def test_the_handler_sees_the_peer_uid_and_pid(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            status = (await peer.ask({"op": "status"}))["status"]
            assert (status["uid"], status["pid"]) == (os.getuid(), os.getpid())
            await peer.close()

    run(scenario())


def test_a_peer_with_a_uid_not_allowed_is_refused_and_closed(folder: Path) -> None:
    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            async with serving(folder, allowed_uids={os.getuid() + 4242}) as (_server, handler):
                peer = await Peer.connect(folder / "s.sock")
                reply = await peer.ask({"op": "status"})
                assert error_of(reply).startswith(f"permission denied: uid {os.getuid()} ")
                assert await peer.rest_until_closed() == b""
                await peer.close()
                assert handler.requests == []
        assert handler.closed == []  # the handler never saw that connection
        assert [e["peer_uid"] for e in logs if e["event"] == "control_peer_refused"] == [
            os.getuid()
        ]

    run(scenario())


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


# --- subscriptions --------------------------------------------------------------------------


def test_a_subscriber_receives_published_events_in_order(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (server, handler):
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "subscribe"}) == {"ok": True}
            assert server.subscribers == 1
            # Further lines on a subscription are ignored, not answered.
            await peer.send({"op": "status"})
            for i in range(100):
                server.publish({"event": "tick", "n": i})
            assert [await peer.reply() for _ in range(100)] == [
                {"event": "tick", "n": i} for i in range(100)
            ]
            assert handler.requests == []
            await peer.close()
            await until(lambda: server.subscribers == 0, "the subscription to end")
            assert len(handler.closed) == 1

    run(scenario())


def test_publish_without_subscribers_and_with_bad_events_never_raises(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (server, _):
            server.publish({"event": "nobody_listens"})
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "subscribe"}) == {"ok": True}
            with structlog.testing.capture_logs() as logs:
                server.publish({"event": "bad", "value": object()})
            assert [e["event"] for e in logs] == ["control_error"]
            server.publish({"event": "good"})
            assert await peer.reply() == {"event": "good"}
            await peer.close()

    run(scenario())


def test_a_subscriber_that_never_reads_does_not_block_publish_or_others(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder, subscriber_queue=64) as (server, _):
            stuck = await Peer.connect(folder / "s.sock")
            assert await stuck.ask({"op": "subscribe"}) == {"ok": True}
            reader = await Peer.connect(folder / "s.sock")
            assert await reader.ask({"op": "subscribe"}) == {"ok": True}
            received: list[dict[str, Any]] = []

            async def read_until_final() -> None:
                while True:
                    received.append(await reader.reply())
                    if received[-1]["event"] == "final":
                        return

            reading = asyncio.create_task(read_until_final())
            padding = "x" * 1024  # ten megabytes in all: far more than socket buffers hold
            for i in range(10_000):
                server.publish({"event": "tick", "n": i, "pad": padding})
                if i % 100 == 0:
                    await asyncio.sleep(0)  # let the pumps and the reader run
            assert server.dropped_events > 0
            # The stuck subscriber's queue stays full; the reader's drains, so "final" arrives.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while not reading.done() and loop.time() < deadline:
                server.publish({"event": "final"})
                await asyncio.wait([reading], timeout=0.01)
            await reading
            ticks = [e["n"] for e in received if e["event"] == "tick"]
            assert ticks, "the reading subscriber got no ticks"
            assert ticks == sorted(set(ticks))
            assert server.subscribers == 2
            await reader.close()
        await stuck.close()

    run(scenario())


def test_a_subscriber_that_falls_behind_is_told_how_many_events_it_missed(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder, subscriber_queue=4) as (server, _):
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "subscribe"}) == {"ok": True}
            for i in range(10):  # no await: the queue takes 4, 6 are dropped
                server.publish({"event": "tick", "n": i})
            assert [(await peer.reply())["n"] for _ in range(4)] == [0, 1, 2, 3]
            server.publish({"event": "tick", "n": 10})
            assert await peer.reply() == {"event": "events_dropped", "count": 6}
            assert await peer.reply() == {"event": "tick", "n": 10}
            assert server.dropped_events == 6
            await peer.close()

    run(scenario())


# --- the blocking client --------------------------------------------------------------------


def test_client_request_round_trip(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            path = folder / "s.sock"
            reply = await asyncio.to_thread(client.request, path, {"op": "select", "model": "m"})
            assert reply == {"ok": True, "model": "m"}
            refused = await asyncio.to_thread(client.request, path, {"op": "nope"})
            assert error_of(refused).startswith('unknown op "nope"')

    run(scenario())


def test_control_client_keeps_one_connection_for_several_requests(folder: Path) -> None:
    def talk(path: Path) -> list[dict[str, Any]]:
        with client.ControlClient(path) as c:
            return [c.request({"op": "status"}), c.request({"op": "status"})]

    async def scenario() -> None:
        async with serving(folder) as _:
            first, second = await asyncio.to_thread(talk, folder / "s.sock")
            assert first["status"]["conn"] == second["status"]["conn"]

    run(scenario())


def test_client_subscribe_yields_events_until_the_daemon_closes(folder: Path) -> None:
    async def scenario() -> None:
        server = ControlServer(folder / "s.sock", FakeHandler())
        await server.start()
        try:
            events = asyncio.create_task(
                asyncio.to_thread(lambda: list(client.subscribe(folder / "s.sock")))
            )
            await until(lambda: server.subscribers == 1, "the client to subscribe")
            for i in range(3):
                server.publish({"event": "tick", "n": i})
        finally:
            await server.close()
        assert await events == [{"event": "tick", "n": i} for i in range(3)]

    run(scenario())


def test_client_reports_no_daemon_when_the_socket_is_missing(folder: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=r"no lmkeeperd is running \(no socket at .*s\.sock"):
        client.request(folder / "s.sock", {"op": "status"})


def test_client_reports_no_daemon_when_the_socket_refuses(folder: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(folder / "s.sock"))
    with pytest.raises(DaemonNotRunning, match=r"connection refused at .*s\.sock"):
        client.request(folder / "s.sock", {"op": "status"})


@pytest.mark.parametrize("garbage", [b"not json\n", b"[1]\n"])
def test_client_raises_protocol_error_on_a_garbled_reply(folder: Path, garbage: bytes) -> None:
    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(garbage)
            await writer.drain()
            writer.close()

        fake = await asyncio.start_unix_server(answer, folder / "s.sock")
        async with fake:
            with pytest.raises(ProtocolError, match="garbled reply"):
                await asyncio.to_thread(client.request, folder / "s.sock", {"op": "status"})

    run(scenario())


def test_client_times_out_when_the_daemon_does_not_answer(folder: Path) -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        handler.gate = asyncio.Event()
        async with serving(folder, handler) as _:
            with pytest.raises(DaemonError, match=r"did not answer within 0\.2 s"):
                await asyncio.to_thread(
                    client.request, folder / "s.sock", {"op": "unload"}, timeout=0.2
                )
            handler.gate.set()

    run(scenario())


# --- robustness against arbitrary bytes, on a live server -------------------------------------


class ServerThread:
    """A ControlServer on its own loop in a thread, for blocking clients and hypothesis."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "s.sock"
        self.handler = FakeHandler()
        self.server = ControlServer(self.path, self.handler)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(WAIT_S)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.call(self.server.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


chunks = st.lists(
    st.binary(max_size=300)
    | st.sampled_from(
        [
            b"\n",
            b'{"op":"status"}\n',
            b'{"op":"subscribe"}\n',
            b'{"op":"stream_start"}\n',
            b'{"op":"select","model":"crash"}\n',
            b"[" * 2000,
            b"\xff\xfe",
            b"z" * (MAX_LINE + 10),
        ]
    ),
    max_size=8,
)


def test_random_bytes_never_break_the_server(folder: Path) -> None:
    with ServerThread(folder) as live:
        connections = 0

        @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(chunks)
        def feed(pieces: list[bytes]) -> None:
            nonlocal connections
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(WAIT_S)
                sock.connect(str(live.path))
                connections += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for piece in pieces:
                        sock.sendall(piece)
                    sock.shutdown(socket.SHUT_WR)
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(65536):
                        pass  # the server ends the connection itself after our EOF
            reply = client.request(live.path, {"op": "status"})
            connections += 1
            assert reply["ok"] is True

        feed()

        def settled() -> bool:
            return live.server.connections == 0

        async def wait_settled() -> None:
            await until(settled, "every connection to end")

        live.call(wait_settled)
        assert Counter(live.handler.closed) == Counter(range(1, connections + 1))
