"""The blocking control client against the real server, and arbitrary bytes on a live server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from control_harness import (
    WAIT_S,
    FakeHandler,
    T,
    error_of,
    run,
    serving,
    until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.control import client
from lmkeeperd.control.protocol import (
    MAX_LINE,
)
from lmkeeperd.control.server import ControlServer
from lmkeeperd.errors import (
    DaemonError,
    DaemonNotRunning,
    ProtocolError,
)

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
