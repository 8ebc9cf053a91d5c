"""Forwarding one request to LM Studio and its answer back (server.py's docstring, 1.-6.).

`Forwarder.forward` reads the body (whole, up to a limit), opens the request's stream the
moment it leaves (or waits for a switch first, with select_on_request), sends the request
over a pooled keep-alive connection (again, once, if that connection turns out to have been
closed by the server), and relays the answer as it arrives. Failures before LM Studio answers
become an error answer (`_Refused`); a side breaking off a message under way ends the client's
connection (`Broken`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from lmkeeperd.proxy.answers import send_error
from lmkeeperd.proxy.classify import (
    REPLAY_BODY_LIMIT,
    SELECT_BODY_LIMIT,
    is_event_stream,
    is_inference,
    model_of,
)
from lmkeeperd.proxy.hooks import ProxyHooks, ProxySettings, ProxyStats, SelectionError
from lmkeeperd.proxy.http1 import (
    LAST_CHUNK,
    BodyDecoder,
    Framing,
    Headers,
    HttpError,
    Request,
    Response,
    chunk,
    end_to_end,
    request_head,
    response_head,
)
from lmkeeperd.proxy.wire import ClientSide, Upstream, UpstreamPool, UpstreamUnreachable

log = structlog.get_logger()


class _Refused(Exception):
    """The exchange with LM Studio failed before it answered: tell the client so."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Broken(Exception):
    """A side broke off a message under way: the client's connection must close."""


class Forwarder:
    """Forwards requests to LM Studio with the current settings, over a pool of connections."""

    def __init__(self, hooks: ProxyHooks, settings: ProxySettings, stats: ProxyStats) -> None:
        self._hooks = hooks
        self.settings = settings
        self.stats = stats
        self._pool = UpstreamPool(settings.upstream, connect_timeout=settings.connect_timeout)

    def configure(self, settings: ProxySettings) -> None:
        """Apply new settings from the next request on (a reloaded config)."""
        old, self.settings = self.settings, settings
        if (settings.upstream, settings.connect_timeout) != (old.upstream, old.connect_timeout):
            self._pool.close()
            self._pool = UpstreamPool(settings.upstream, connect_timeout=settings.connect_timeout)

    def close(self) -> None:
        self._pool.close()

    async def forward(
        self, client: ClientSide, request: Request, path: bytes, hangup: Callable[[], None]
    ) -> tuple[bool, str]:
        """Forward one request and its answer: (connection reusable, outcome "2xx".."5xx")."""
        settings, hooks, pool = self.settings, self._hooks, self._pool
        inference = is_inference(request.method, path)
        select = inference and settings.select_on_request
        body, complete = await client.read_body_upto(
            SELECT_BODY_LIMIT if select else REPLAY_BODY_LIMIT
        )
        # L24: the model a request names is the one it uses (counted for it), whether or
        # not it may switch; only select-on-request makes it a selection.
        named = model_of(body) if inference and complete else None
        model = named if select else None
        if complete:
            client.watch_hangup(hangup)
        stream: int | None = None
        upstream: Upstream | None = None

        def open_stream() -> None:
            nonlocal stream
            stream = hooks.stream_opened(named)
            self.stats.streams_open += 1

        def sent() -> None:
            # The request is on its way: what the daemon does with that news (the
            # log line of a state change) overlaps with LM Studio's work on it.
            if not inference:
                hooks.activity(named)
            elif stream is None:
                open_stream()  # its end restarts the idle timer (L9): activity enough

        async def refuse(status: int, message: str, kind: str, code: str) -> tuple[bool, str]:
            keep = await send_error(client, request, status, message, kind, code)
            return keep, f"{status // 100}xx"

        try:
            if model is not None:
                try:
                    stream = await hooks.stream_for(model, max_wait=settings.read_timeout)
                    self.stats.streams_open += 1
                except SelectionError as e:
                    return await refuse(e.status, str(e), "model_unavailable", "model_not_ready")
            try:
                # An inference request pins the model from the moment it is on its
                # way: nothing can unload it before `sent` opens its stream, as no
                # await comes between sending and opening.
                upstream, response = await self._exchange(
                    client, request, body, settings, pool, hangup, on_sent=sent
                )
            except _Refused as e:
                self.stats.upstream_errors += 1
                log.debug("proxy_upstream_failed", status=e.status, error=str(e))
                return await refuse(e.status, str(e), "upstream_error", e.code)
            if stream is None and is_event_stream(response):
                open_stream()
            keep = await self._relay(client, request, upstream, response, settings.read_timeout)
            if response.keep_alive:
                pool.release(upstream)
            else:
                upstream.close()
            upstream = None
            return keep, f"{response.status // 100}xx"
        finally:
            if upstream is not None:
                upstream.close()  # LM Studio sees the request cancelled
            if stream is not None:
                self.stats.streams_open -= 1
                hooks.stream_closed(stream)
            client.disarm_hangup()

    async def _relay(
        self,
        client: ClientSide,
        request: Request,
        upstream: Upstream,
        response: Response,
        read_timeout: float,
    ) -> bool:
        """The answer, from LM Studio to the client, each read as it arrives.

        Returns whether the client's connection can carry another request.
        """
        headers = end_to_end(response.headers, response.names)
        framing = response.framing
        chunked = framing in (Framing.CHUNKED, Framing.CLOSE) and request.minor == 1
        keep = request.keep_alive and client.body.done
        if chunked:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif framing is Framing.CLOSE:
            keep = False  # an HTTP/1.0 client: the end of the body is the end of the connection
        if not keep:
            headers.append((b"Connection", b"close"))
        client.write(response_head(response.status, response.reason, headers))
        body = BodyDecoder(framing, response.length)
        # The head leaves with the first body bytes if they are here already, else
        # on its own before the wait for them (`before_wait`): never held back.
        while not body.done:
            try:
                async with asyncio.timeout(read_timeout):
                    data = await upstream.read_body(body, before_wait=client.flush)
            except (OSError, HttpError, TimeoutError) as e:
                self.stats.upstream_errors += 1
                log.debug("proxy_upstream_broke_off", error=type(e).__name__)
                raise Broken from None
            if data:
                client.write(chunk(data) if chunked else data)
            if not body.done:
                await client.drain()
        client.disarm_hangup()  # the client may close as soon as it has the last byte
        if chunked:
            client.write(LAST_CHUNK)
        await client.drain()
        return keep

    async def _exchange(
        self,
        client: ClientSide,
        request: Request,
        body: bytes,
        settings: ProxySettings,
        pool: UpstreamPool,
        hangup: Callable[[], None],
        on_sent: Callable[[], None] | None,
    ) -> tuple[Upstream, Response]:
        """Send the request to LM Studio and read its answer's head; raises _Refused.

        `on_sent` is called once, right after the request first leaves.
        """
        complete = client.body.done
        headers: Headers = [(b"Host", pool.host_header)]
        headers += [
            (k, v)
            for k, v in end_to_end(request.headers, request.names)
            if k.lower() != b"content-length"
        ]
        token = settings.token if settings.inject_token else None
        if token is not None and request.header(b"authorization") is None:
            headers.append((b"Authorization", token.bearer().encode("latin-1")))
        # "OPTIONS *" is the one target that is not a path.
        target = pool.prefix + request.target if request.target[:1] == b"/" else request.target
        if complete:
            if body or request.framing is not Framing.NONE:
                headers.append((b"Content-Length", b"%d" % len(body)))
            first = request_head(request.method, target, headers) + body
        elif request.framing is Framing.LENGTH:
            headers.append((b"Content-Length", b"%d" % request.length))
            first = request_head(request.method, target, headers) + body
        else:
            headers.append((b"Transfer-Encoding", b"chunked"))
            first = request_head(request.method, target, headers)
            first += chunk(body) if body else b""
        upstream_url = settings.upstream
        for attempt in (1, 2):
            try:
                upstream, reused = await pool.acquire()
            except UpstreamUnreachable as e:
                raise _Refused(
                    502,
                    f"lmkeeperd could not connect to LM Studio at {upstream_url}: {e}",
                    "upstream_unreachable",
                ) from None
            try:
                upstream.write(first)
                upstream.flush()
                if on_sent is not None:
                    on_sent()
                    on_sent = None
                if not complete:
                    chunked = request.framing is not Framing.LENGTH
                    await self._send_rest(client, upstream, chunked=chunked)
                    client.watch_hangup(hangup)
                await upstream.drain()
                async with asyncio.timeout(settings.read_timeout):
                    return upstream, await upstream.response(request.method)
            except TimeoutError:
                upstream.close()
                raise _Refused(
                    504,
                    f"LM Studio at {upstream_url} did not answer within "
                    f"{settings.read_timeout:g} s ([server] load_timeout)",
                    "upstream_timeout",
                ) from None
            except (OSError, HttpError) as e:
                upstream.close()
                if reused and complete and attempt == 1 and not isinstance(e, HttpError):
                    continue  # the server had closed that idle connection: send it again
                reason = (
                    "it sent a malformed answer"
                    if isinstance(e, HttpError)
                    else "it closed the connection without answering"
                )
                raise _Refused(
                    502, f"LM Studio at {upstream_url} failed the request: {reason}", "bad_gateway"
                ) from None
            except BaseException:
                upstream.close()  # cancelled (the client left, or we are closing), or Broken
                raise
        raise AssertionError("unreachable")

    async def _send_rest(self, client: ClientSide, upstream: Upstream, *, chunked: bool) -> None:
        """The rest of a large request body, from the client to LM Studio as it arrives."""
        while not client.body.done:
            try:
                data = await client.read_body(client.body)
            except (OSError, HttpError):
                raise Broken from None  # the client's fault or its leaving: nothing to answer
            if data:
                upstream.write(chunk(data) if chunked else data)
                await upstream.drain()
        if chunked:
            upstream.write(LAST_CHUNK)
