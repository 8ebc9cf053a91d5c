"""What the proxy's in-process tests share: a fake daemon behind `ProxyHooks`, a proxy for
an upstream, and an echo upstream in the test's loop that answers with what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import httpx

from lmkeeperd.proxy import (
    ProxyServer,
    ProxySettings,
    SelectionError,
)

T = TypeVar("T")
A = "qwen/qwen3-4b-2507"
CHAT = "/v1/chat/completions"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Hooks:
    """A fake daemon: records what the proxy tells it."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.open: set[int] = set()
        self.events: list[tuple[str, Any]] = []
        self.refuse: SelectionError | None = None
        self.stream_models: list[str | None] = []  # the model each stream was opened on
        self._changed = asyncio.Event()

    def _record(self, name: str, value: Any) -> None:
        self.events.append((name, value))
        self._changed.set()

    async def wait(self, predicate: Callable[[], Any], within: float = 10.0) -> None:
        """Until `predicate()` holds, re-checked after each thing the proxy tells us."""
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def activity(self, model: str | None = None) -> None:
        self._record("activity", model)

    def stream_opened(self, model: str | None = None) -> int:
        self.stream_models.append(model)
        stream = next(self.ids)
        self.open.add(stream)
        self._record("opened", stream)
        return stream

    def stream_closed(self, stream: int) -> None:
        self.open.remove(stream)
        self._record("closed", stream)

    async def stream_for(self, model: str, *, max_wait: float) -> int:
        self._record("stream_for", model)
        if self.refuse is not None:
            raise self.refuse
        return self.stream_opened()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@contextlib.asynccontextmanager
async def proxy_for(
    upstream: str, hooks: Hooks | None = None, **options: Any
) -> AsyncIterator[tuple[ProxyServer, str]]:
    settings = ProxySettings(upstream=upstream, **options)
    server = ProxyServer(
        "127.0.0.1", 0, metrics=lambda: "# metrics\n", hooks=hooks or Hooks(), settings=settings
    )
    await server.start()
    try:
        yield server, f"http://{server.address}"
    finally:
        await server.close()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=10)


# --- an upstream that answers with what it received ------------------------------------


def _decode_chunked(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


class Echo:
    """Answers each request with JSON describing it: head lines, body length and digest.

    `GET /sse` answers with three server-sent events instead; `close_after` closes
    each connection after one answer without saying so (a keep-alive race).
    """

    def __init__(self, *, close_after: bool = False) -> None:
        self.close_after = close_after
        self.server: asyncio.Server | None = None
        self.connections = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Echo:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")[:-2]
                fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                if "content-length" in fields:
                    body = await reader.readexactly(int(fields["content-length"]))
                elif fields.get("transfer-encoding") == "chunked":
                    raw = b""
                    while not raw.endswith(b"0\r\n\r\n"):
                        raw += await reader.read(65536)
                    body = _decode_chunked(raw)
                else:
                    body = b""
                if lines[0].startswith("GET /sse"):
                    events = b"".join(b"data: %d\n\n" % i for i in range(3))
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(events), events)
                    )
                else:
                    answer = json.dumps(
                        {
                            "request_line": lines[0],
                            "headers": lines[1:],
                            "body_length": len(body),
                            "body_sha256": hashlib.sha256(body).hexdigest(),
                        }
                    ).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"X-Upstream: echo\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                    )
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()


def names_of(headers: list[str]) -> list[str]:
    return [h.partition(":")[0] for h in headers]
