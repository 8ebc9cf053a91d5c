"""What the control socket's tests share: a fake request handler, a raw-line peer, a server
serving in a short temp folder. The handler here is a small fake: these tests are about the
socket, framing, peer checks and subscriptions, not about what the daemon answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lmkeeperd.control.protocol import (
    MAX_LINE,
    Request,
    Select,
    Status,
    StreamStart,
    Unload,
)
from lmkeeperd.control.server import Connection, ControlServer
from lmkeeperd.errors import (
    ModelNotFound,
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


def error_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, str)
    return error
