"""Both ends of the proxy on asyncio streams: a client's connection, LM Studio's.

`ClientSide` is our server end of a client's connection, `Upstream` our client
end of a connection to LM Studio, `UpstreamPool` keeps the latter alive between
requests. Parsing is http1.py's; this module only moves bytes.

Writes are collected and leave together (`flush`): a head and a body that are
ready at the same time go out in one segment. Every wait for the peer flushes
first, so nothing that is ready is ever held back. (asyncio sets TCP_NODELAY
on every TCP connection, so a small write leaves at once.)
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from lmkeeperd.listening import GuardedStreamProtocol, Slot
from lmkeeperd.proxy.http1 import (
    BodyDecoder,
    Framing,
    HttpError,
    Request,
    Response,
    parse_request,
    parse_response,
    response_head,
    split_head,
)

READ_SIZE = 64 * 1024


class UpstreamUnreachable(Exception):
    """No connection could be made to the upstream server."""


class _Wire:
    __slots__ = ("_out", "buffer", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()  # read, not yet parsed
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue `data`; it leaves with the next `flush` or `drain`."""
        self._out.append(data)

    def flush(self) -> None:
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self.writer.write(data)

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    async def _fill(self) -> bool:
        """Read what has arrived into `buffer`; False when the peer has closed."""
        data = await self.reader.read(READ_SIZE)
        if not data:
            return False
        self.buffer += data
        return True

    async def wait_data(self) -> bool:
        """Wait until some bytes are buffered; False when the peer closed first."""
        return bool(self.buffer) or await self._fill()

    async def _head(self) -> bytes | None:
        """The next head; None when the peer closed before sending a byte of it."""
        while True:
            head = split_head(self.buffer)
            if head is not None:
                return head
            self.flush()
            if not await self._fill():
                if self.buffer.strip():
                    raise HttpError("the connection closed in the middle of a head")
                return None

    async def read_body(
        self, body: BodyDecoder, before_wait: Callable[[], None] | None = None
    ) -> bytes:
        """Body bytes that have arrived (at least one, unless the body is complete).

        `before_wait` is called before waiting for the peer.
        """
        while True:
            data = body.take(self.buffer)
            if data or body.done:
                return data
            self.flush()
            if before_wait is not None:
                before_wait()
            if not await self._fill():
                body.eof()
                return b""

    def close(self) -> None:
        self.writer.transport.abort()  # nothing left worth flushing: drop it now


class ClientProtocol(GuardedStreamProtocol):
    """asyncio's stream protocol, which also says at once when the client closes its end.

    A client waiting for its answer sends nothing; its closing is the only sign
    that it left, and LM Studio should stop working for it then, not when the
    next chunk of the answer fails to reach it.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        slot: Slot | None = None,
    ) -> None:
        super().__init__(reader, connected, loop, slot)
        self.peer_closed = False
        self.on_close: Callable[[], None] | None = None

    def eof_received(self) -> bool:
        keep_open = bool(super().eof_received())
        self._peer_closed()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._peer_closed()

    def _peer_closed(self) -> None:
        self.peer_closed = True
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()


class ClientSide(_Wire):
    """The server end of one client connection."""

    __slots__ = ("_body_timeout", "_protocol", "body")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body_timeout: float | None = None,
    ) -> None:
        super().__init__(reader, writer)
        self.body = BodyDecoder(Framing.NONE)
        self._body_timeout = body_timeout
        protocol = writer.transport.get_protocol()
        self._protocol = protocol if isinstance(protocol, ClientProtocol) else None

    @property
    def slot(self) -> Slot | None:
        """This connection's place under the listener's cap (None: not capped)."""
        return self._protocol.slot if self._protocol is not None else None

    async def next_request(self) -> Request | None:
        """The next request's head, or None when the client closed between requests."""
        head = await self._head()
        if head is None:
            return None
        request = parse_request(head)
        self.body = BodyDecoder(request.framing, request.length)
        if request.expects_continue and not self.body.done:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return request

    async def read_body(
        self, body: BodyDecoder, before_wait: Callable[[], None] | None = None
    ) -> bytes:
        """As `_Wire.read_body`; raises TimeoutError when the client sends nothing of its
        body for `body_timeout` seconds (a request trickling in must not hold its place)."""
        async with asyncio.timeout(self._body_timeout):
            return await super().read_body(body, before_wait)

    async def read_body_upto(self, limit: int) -> tuple[bytes, bool]:
        """The body, read until it ends or more than `limit` bytes arrived; (bytes, complete)."""
        parts: list[bytes] = []
        size = 0
        while not self.body.done and size <= limit:
            data = await self.read_body(self.body)
            parts.append(data)
            size += len(data)
        return b"".join(parts), self.body.done

    async def respond(
        self,
        status: int,
        reason: bytes,
        body: bytes,
        content_type: bytes,
        *,
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        """A whole answer of our own (metrics, errors); `head_only` for a HEAD request."""
        headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", b"%d" % len(body)),
            (b"Cache-Control", b"no-store"),
        ]
        if close:
            headers.append((b"Connection", b"close"))
        self.write(response_head(status, reason, headers) + (b"" if head_only else body))
        await self.drain()

    # -- noticing a client that leaves while it waits for its answer ------------------------

    def watch_hangup(self, on_hangup: Callable[[], None]) -> None:
        """Call `on_hangup` (at once if already so) when the client closes, until disarmed.

        Armed once the request is read whole: from then on the client has
        nothing more to say until its answer is complete.
        """
        protocol = self._protocol
        if protocol is None:
            return
        if protocol.peer_closed:
            on_hangup()
        else:
            protocol.on_close = on_hangup

    def disarm_hangup(self) -> None:
        """The client may close from now on (its answer is complete, or was never due)."""
        if self._protocol is not None:
            self._protocol.on_close = None


class Upstream(_Wire):
    """Our client end of one connection to the upstream server."""

    __slots__ = ("idle_since",)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.idle_since = 0.0

    async def response(self, method: bytes) -> Response:
        """The final answer's head (1xx interim answers are skipped)."""
        while True:
            head = await self._head()
            if head is None:
                raise ConnectionResetError("the server closed the connection without answering")
            response = parse_response(head, method)
            if response.status >= 200:
                return response

    def stale(self) -> bool:
        """The server closed this idle connection (or it broke)."""
        return self.reader.at_eof() or self.reader.exception() is not None


class UpstreamPool:
    """Keep-alive connections to one upstream base URL, newest first.

    An idle connection is not reused after `max_idle_s`: servers close idle
    keep-alive connections on their own (Node's default is 5 s), and one that
    closes just as a request is sent on it loses that request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        max_idle: int = 32,
        max_idle_s: float = 4.0,
    ) -> None:
        parts = urlsplit(base_url)
        secure = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if secure else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if secure else 80
        self.host_header = (host if self.port == default_port else f"{host}:{self.port}").encode()
        self.prefix = parts.path.rstrip("/").encode()
        self._ssl = ssl.create_default_context() if secure else None
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._idle: list[Upstream] = []
        self._closed = False

    async def acquire(self) -> tuple[Upstream, bool]:
        """A connection ready for a request, and whether it was used before."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self._max_idle_s and not conn.stale():
                return conn, True
            conn.close()
        return await self.connect(), False

    async def connect(self) -> Upstream:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, limit=READ_SIZE
                )
        except TimeoutError:
            raise UpstreamUnreachable(f"no connection within {self._connect_timeout:g} s") from None
        except OSError as e:
            raise UpstreamUnreachable(e.strerror or str(e) or type(e).__name__) from None
        return Upstream(reader, writer)

    def release(self, conn: Upstream) -> None:
        """Take `conn` back after a complete exchange that left it reusable."""
        if self._closed or len(self._idle) >= self._max_idle or conn.buffer:
            conn.close()  # (bytes beyond the answer: the server is confused)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
