"""The proxy: an HTTP/1.1 listener that forwards every request to LM Studio.

Theory of operation
-------------------
Clients talk to this listener as they would to LM Studio. Each connection
runs in its own task and carries requests one after another (keep-alive);
http1.py parses, wire.py moves the bytes:

1. `GET /lmkeeperd/metrics` is answered here (Prometheus text); any other
   path under `/lmkeeperd/` gets a 404. Everything else is forwarded to
   `[server] url` + the path, unchanged, over a pool of keep-alive
   connections. Headers pass as they are, except those that describe one
   connection (hop-by-hop) and Host; the client's Authorization passes
   through, or the daemon's token is added when the client sent none and
   `inject_token` is on.
2. Every request that reaches LM Studio is activity (lifecycle L10).
3. An inference request (POST to `chat/completions`, `completions`,
   `embeddings`, `responses`, `messages` or `chat` under `/v1`, `/api/v0`
   or `/api/v1`) is a stream (L7-L9) from the moment it is sent to LM Studio
   until the last byte of its answer has been sent on, or until either side
   goes away, streamed answer or not: no model is ever unloaded under a
   request. The stream opens in the same step as the request leaves, with
   no await in between, so nothing can unload the model in the gap; the
   daemon's work on the news (a log line) overlaps with LM Studio's. Any
   other request whose answer is `text/event-stream` is a stream from the
   answer's first byte.
4. With `select_on_request`, an inference request whose body names a model
   goes through `ProxyHooks.stream_for`: a model other than the current one
   is selected, and the request waits, not counting as a stream, until the
   switch is done; the stream is opened in the same step.
5. Request bodies up to a limit are read whole before forwarding (LM Studio
   reads the whole body before it answers anyway): the model's name can be
   read from them, and a request sent on a keep-alive connection that the
   server had just closed can be sent again. Larger bodies stream through.
   Answers always stream: each read from LM Studio is written to the client
   at once, so server-sent events arrive one by one as they leave LM Studio.
6. Once the request is read whole, the client's end of the socket is
   watched: a client that goes away cancels its request, which closes the
   connection to LM Studio (so LM Studio stops generating) and ends the
   stream.

Failures are answered with an OpenAI-style JSON error body: 502 when LM
Studio cannot be reached or breaks the exchange before answering, 504 when it
stays silent for `read_timeout`, 503/504 when a selection fails or times out.
If LM Studio breaks off an answer already under way, the client's connection
is closed, so the client sees a truncated answer rather than a complete one.

Listening (docs/proxy.md, "Limits"): at most `max_connections` client
connections; one idle the longest (no request yet, or between requests) is
shed to make room for a newcomer, and only when every one is busy is the
newcomer answered 503 and closed (lmkeeperd/listening.py). A request head
must arrive whole within `head_timeout` seconds (from the connection's start,
or from the first byte of a later request); a keep-alive connection that
sends nothing for `keepalive_timeout` seconds is closed, and so is one whose
request body stalls that long. With `inject_token`,
a request not addressed to the proxy's loopback name, or from a foreign
origin, gets 403 (origin.py); a foreign origin gets 403 without it too.

Nothing here logs a request or response body, a query string or a header
value: Authorization headers and the injected token never reach the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import structlog

from lmkeeperd.errors import DaemonError
from lmkeeperd.listening import ConnectionCap, Refuse
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
from lmkeeperd.proxy.origin import own_hosts, refusal
from lmkeeperd.proxy.wire import (
    READ_SIZE,
    ClientProtocol,
    ClientSide,
    Upstream,
    UpstreamPool,
    UpstreamUnreachable,
)

log = structlog.get_logger()

LOCAL_PREFIX = b"/lmkeeperd/"
METRICS_PATH = b"/lmkeeperd/metrics"
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json; charset=utf-8"

# A body up to this size is read whole before forwarding (see the docstring, 5.)
REPLAY_BODY_LIMIT = 1024 * 1024
# With select_on_request the model's name must be read: images in a vision
# request make bodies of several MB.
SELECT_BODY_LIMIT = 32 * 1024 * 1024
# Connections a listener holds at most (well below systemd's soft `ulimit -n` of 1024).
MAX_CONNECTIONS = 256
# A request head must arrive whole within this long: from the connection's start, or
# from the first byte of a later request on it (a slow-loris client is cut here).
HEAD_TIMEOUT_S = 10.0
# A keep-alive connection that sends nothing for this long is closed (clients' own
# pools drop idle connections sooner: httpx after 5 s), as is a request whose body
# stops arriving for this long.
KEEPALIVE_IDLE_S = 30.0
# How long closing the listener waits for connections to end before cutting them.
CLOSE_GRACE_S = 0.5

_API_ROOTS = (b"/v1", b"/api/v0", b"/api/v1")
_INFERENCE = frozenset(
    {b"/chat/completions", b"/completions", b"/embeddings", b"/responses", b"/messages", b"/chat"}
)


def is_inference(method: bytes, path: bytes) -> bool:
    """Whether a request asks a model for something (and so pins it while in flight)."""
    if method != b"POST":
        return False
    path = path.rstrip(b"/")
    return any(path.startswith(root) and path[len(root) :] in _INFERENCE for root in _API_ROOTS)


def model_of(body: bytes) -> str | None:
    """The `model` a JSON request body names, trimmed; None when it names none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model.strip():
        return None
    return model.strip()


def error_body(message: str, kind: str, code: str) -> bytes:
    """An error in the shape OpenAI-compatible clients (and LM Studio) use."""
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _is_event_stream(response: Response) -> bool:
    content_type = response.header(b"content-type") or b""
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_OVER_CAP_BODY = error_body(
    "lmkeeperd's proxy has too many connections under way; try again shortly",
    "server_error",
    "too_many_connections",
)
# Sent to a connection over the cap without reading its request, then closed.
_OVER_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    % (len(_OVER_CAP_BODY), _OVER_CAP_BODY)
)


class _Refused(Exception):
    """The exchange with LM Studio failed before it answered: tell the client so."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _Broken(Exception):
    """A side broke off a message under way: the client's connection must close."""


class ProxyServer:
    """One HTTP listener: the proxy, or (without `settings`) a metrics-only listener."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Callable[[], str],
        hooks: ProxyHooks | None = None,
        settings: ProxySettings | None = None,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT_S,
        keepalive_timeout: float = KEEPALIVE_IDLE_S,
    ) -> None:
        if (hooks is None) != (settings is None):
            raise ValueError("a forwarding proxy needs both hooks and settings")
        self._host = host
        self._port = port
        self._metrics = metrics
        self._hooks = hooks
        self._settings = settings
        self._pool = (
            UpstreamPool(settings.upstream, connect_timeout=settings.connect_timeout)
            if settings is not None
            else None
        )
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.stats = ProxyStats()
        self.address = format_address(host, port)
        self.cap = ConnectionCap("proxy" if settings is not None else "metrics", max_connections)
        self._head_timeout = head_timeout
        self._keepalive_timeout = keepalive_timeout
        self._own_hosts = own_hosts(host, port)

    @property
    def forwarding(self) -> bool:
        return self._settings is not None

    @property
    def settings(self) -> ProxySettings | None:
        return self._settings

    def configure(self, settings: ProxySettings) -> None:
        """Apply new settings from the next request on (a reloaded config)."""
        if self._settings is None:
            raise ValueError("a metrics-only listener does not forward")
        old, self._settings = self._settings, settings
        if (settings.upstream, settings.connect_timeout) != (old.upstream, old.connect_timeout):
            if self._pool is not None:
                self._pool.close()
            self._pool = UpstreamPool(settings.upstream, connect_timeout=settings.connect_timeout)

    async def start(self) -> None:
        """Listen; raises DaemonError when the address cannot be used."""
        try:
            loop = asyncio.get_running_loop()

            def protocol() -> ClientProtocol | Refuse:
                slot = self.cap.admit()
                if slot is None:
                    return Refuse(_OVER_CAP)
                reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
                return ClientProtocol(reader, self._serve, loop, slot)

            self._server = await loop.create_server(
                protocol, self._host, self._port, reuse_address=True
            )
        except OSError as e:
            raise DaemonError(
                f"cannot listen on {self.address}: {e.strerror or e}"
                + (" (another program uses that port)" if e.errno in (48, 98) else "")
            ) from None
        for listening in self._server.sockets:
            # asyncio's backlog (100) is also how many it accepts per wake-up; a longer
            # kernel queue keeps a burst from dropping clients' SYNs (each costs them a
            # 1 s retransmit). listen() again only changes the backlog; the duplicate
            # socket shares the listening one.
            with listening.dup() as same:
                same.listen(socket.SOMAXCONN)
        bound = self._server.sockets[0].getsockname()
        self.address = format_address(self._host, bound[1])
        self._own_hosts = own_hosts(self._host, bound[1])

    def stop_accepting(self) -> None:
        """Close the listening socket; requests under way go on."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop listening and end every connection (in-flight requests are cut). Idempotent."""
        if self._closing:
            return
        self._closing = True
        self.stop_accepting()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
        if self._pool is not None:
            self._pool.close()
        self.cap.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_GRACE_S)

    # --- one connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.transport.abort()
            return
        self._connections.add(task)
        client = ClientSide(reader, writer, body_timeout=self._keepalive_timeout)
        hung_up = False

        def hangup() -> None:
            nonlocal hung_up
            hung_up = True
            task.cancel()

        try:
            await self._conversation(client, hangup)
        except asyncio.CancelledError:
            # The client hung up, or the listener is closing: either way this task
            # ends here. It must not end cancelled: asyncio's stream protocol would
            # log that as an error.
            if hung_up:
                task.uncancel()
        except (OSError, _Broken):
            pass  # either side went away or broke off: nothing to tell anyone
        except Exception:
            log.exception("proxy_error")
        finally:
            self._connections.discard(task)
            client.disarm_hangup()
            client.close()

    async def _conversation(self, client: ClientSide, hangup: Callable[[], None]) -> None:
        slot = client.slot
        first = True
        while True:
            try:
                if slot is not None:
                    slot.idle()  # no request under way: may make room for a newcomer
                if not first:
                    async with asyncio.timeout(self._keepalive_timeout):
                        if not await client.wait_data():
                            return
                first = False
                async with asyncio.timeout(self._head_timeout):
                    request = await client.next_request()
                if request is None:
                    return
                if slot is not None:
                    slot.busy()
                if not await self._answer(client, request, hangup):
                    return
            except TimeoutError:
                return
            except HttpError as e:
                # A malformed head, or a malformed body read before anything was sent
                # (errors from LM Studio's side never get here). The message never
                # quotes the request's bytes.
                body = error_body(str(e), "invalid_request", "bad_request")
                await client.respond(
                    e.status, _reason(e.status), body, JSON_CONTENT_TYPE, close=True
                )
                return

    async def _answer(
        self, client: ClientSide, request: Request, hangup: Callable[[], None]
    ) -> bool:
        """Answer one request; whether the connection can carry another."""
        path = request.target.split(b"?", 1)[0]
        settings = self._settings
        if settings is not None:
            why = refusal(request, self._own_hosts, inject_token=settings.inject_token)
            if why is not None:
                reason = "origin" if why.startswith("Origin") else "host"
                log.debug("proxy_forbidden", reason=reason)
                return await self._local_error(client, request, 403, why, "forbidden")
        if path.startswith(LOCAL_PREFIX) or self._settings is None:
            return await self._answer_locally(client, request, path)
        if b"websocket" in (request.header(b"upgrade") or b"").lower():
            message = (
                "lmkeeperd's proxy does not tunnel protocol upgrades (WebSocket); "
                "connect such clients (the LM Studio SDK) to LM Studio directly"
            )
            return await self._local_error(client, request, 501, message, "not_implemented")
        stats = self.stats
        stats.request_started()
        outcome = "aborted"
        started = time.monotonic()
        try:
            keep, outcome = await self._forward(client, request, path, hangup)
            return keep
        finally:
            stats.request_ended(outcome)
            log.debug(
                "proxy_request",
                method=request.method.decode("ascii", "replace"),
                path=path.decode("ascii", "replace"),
                outcome=outcome,
                seconds=round(time.monotonic() - started, 4),
            )

    async def _answer_locally(self, client: ClientSide, request: Request, path: bytes) -> bool:
        if path == METRICS_PATH and request.method == b"GET":
            _, complete = await client.read_body_upto(REPLAY_BODY_LIMIT)
            keep = request.keep_alive and complete
            text = self._metrics().encode()
            await client.respond(200, b"OK", text, METRICS_CONTENT_TYPE, close=not keep)
            return keep
        what = "lmkeeperd serves only GET /lmkeeperd/metrics"
        if path.startswith(LOCAL_PREFIX):
            what += " under /lmkeeperd/"
        else:
            what += " on this listener (the proxy is [proxy] listen)"
        return await self._local_error(client, request, 404, what, "not_found")

    async def _local_error(
        self, client: ClientSide, request: Request, status: int, message: str, code: str
    ) -> bool:
        """Answer with an error of our own; whether the connection can carry another."""
        _, complete = await client.read_body_upto(REPLAY_BODY_LIMIT)
        keep = request.keep_alive and complete
        body = error_body(message, "invalid_request", code)
        head_only = request.method == b"HEAD"
        await client.respond(
            status, _reason(status), body, JSON_CONTENT_TYPE, close=not keep, head_only=head_only
        )
        return keep

    # --- forwarding --------------------------------------------------------------------

    async def _forward(
        self, client: ClientSide, request: Request, path: bytes, hangup: Callable[[], None]
    ) -> tuple[bool, str]:
        """Forward one request and its answer: (connection reusable, outcome "2xx".."5xx")."""
        settings, hooks, pool = self._settings, self._hooks, self._pool
        assert settings is not None and hooks is not None and pool is not None
        inference = is_inference(request.method, path)
        select = inference and settings.select_on_request
        body, complete = await client.read_body_upto(
            SELECT_BODY_LIMIT if select else REPLAY_BODY_LIMIT
        )
        model = model_of(body) if select and complete else None
        if complete:
            client.watch_hangup(hangup)
        stream: int | None = None
        upstream: Upstream | None = None

        def open_stream() -> None:
            nonlocal stream
            stream = hooks.stream_opened()
            self.stats.streams_open += 1

        def sent() -> None:
            # The request is on its way: what the daemon does with that news (the
            # log line of a state change) overlaps with LM Studio's work on it.
            if not inference:
                hooks.activity()
            elif stream is None:
                open_stream()  # its end restarts the idle timer (L9): activity enough

        async def refuse(status: int, message: str, kind: str, code: str) -> tuple[bool, str]:
            keep = request.keep_alive and client.body.done
            reply = error_body(message, kind, code)
            head_only = request.method == b"HEAD"
            await client.respond(
                status,
                _reason(status),
                reply,
                JSON_CONTENT_TYPE,
                close=not keep,
                head_only=head_only,
            )
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
            if stream is None and _is_event_stream(response):
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
                raise _Broken from None
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
                upstream.close()  # cancelled (the client left, or we are closing), or _Broken
                raise
        raise AssertionError("unreachable")

    async def _send_rest(self, client: ClientSide, upstream: Upstream, *, chunked: bool) -> None:
        """The rest of a large request body, from the client to LM Studio as it arrives."""
        while not client.body.done:
            try:
                data = await client.read_body(client.body)
            except (OSError, HttpError):
                raise _Broken from None  # the client's fault or its leaving: nothing to answer
            if data:
                upstream.write(chunk(data) if chunked else data)
                await upstream.drain()
        if chunked:
            upstream.write(LAST_CHUNK)
