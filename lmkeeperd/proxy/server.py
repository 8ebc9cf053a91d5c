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

This module listens, runs each connection and routes each request; forward.py
forwards it, answers.py holds the proxy's own answers (errors, metrics, 404s),
classify.py tells inference requests and the model they name.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from lmkeeperd.errors import DaemonError
from lmkeeperd.listening import ConnectionCap, Refuse
from lmkeeperd.proxy.answers import (
    JSON_CONTENT_TYPE,
    LOCAL_PREFIX,
    OVER_CAP,
    answer_locally,
    error_body,
    local_error,
    reason_phrase,
)

# Still importable from here, their home before the split.
from lmkeeperd.proxy.answers import METRICS_PATH as METRICS_PATH
from lmkeeperd.proxy.classify import is_inference as is_inference
from lmkeeperd.proxy.classify import model_of as model_of
from lmkeeperd.proxy.forward import Broken, Forwarder
from lmkeeperd.proxy.hooks import ProxyHooks, ProxySettings, ProxyStats
from lmkeeperd.proxy.http1 import HttpError, Request
from lmkeeperd.proxy.origin import own_hosts, refusal
from lmkeeperd.proxy.wire import READ_SIZE, ClientProtocol, ClientSide

log = structlog.get_logger()

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


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        self.stats = ProxyStats()
        self._forwarder = (
            Forwarder(hooks, settings, self.stats)
            if hooks is not None and settings is not None
            else None
        )
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.address = format_address(host, port)
        self.cap = ConnectionCap("proxy" if settings is not None else "metrics", max_connections)
        self._head_timeout = head_timeout
        self._keepalive_timeout = keepalive_timeout
        self._own_hosts = own_hosts(host, port)

    @property
    def forwarding(self) -> bool:
        return self._forwarder is not None

    @property
    def settings(self) -> ProxySettings | None:
        return self._forwarder.settings if self._forwarder is not None else None

    def configure(self, settings: ProxySettings) -> None:
        """Apply new settings from the next request on (a reloaded config)."""
        if self._forwarder is None:
            raise ValueError("a metrics-only listener does not forward")
        self._forwarder.configure(settings)

    async def start(self) -> None:
        """Listen; raises DaemonError when the address cannot be used."""
        try:
            loop = asyncio.get_running_loop()

            def protocol() -> ClientProtocol | Refuse:
                slot = self.cap.admit()
                if slot is None:
                    return Refuse(OVER_CAP)
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
        if self._forwarder is not None:
            self._forwarder.close()
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
        except (OSError, Broken):
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
                    e.status, reason_phrase(e.status), body, JSON_CONTENT_TYPE, close=True
                )
                return

    async def _answer(
        self, client: ClientSide, request: Request, hangup: Callable[[], None]
    ) -> bool:
        """Answer one request; whether the connection can carry another."""
        path = request.target.split(b"?", 1)[0]
        forwarder = self._forwarder
        if forwarder is not None:
            inject_token = forwarder.settings.inject_token
            why = refusal(request, self._own_hosts, inject_token=inject_token)
            if why is not None:
                reason = "origin" if why.startswith("Origin") else "host"
                log.debug("proxy_forbidden", reason=reason)
                return await local_error(client, request, 403, why, "forbidden")
        if path.startswith(LOCAL_PREFIX) or forwarder is None:
            return await answer_locally(client, request, path, self._metrics)
        if b"websocket" in (request.header(b"upgrade") or b"").lower():
            message = (
                "lmkeeperd's proxy does not tunnel protocol upgrades (WebSocket); "
                "connect such clients (the LM Studio SDK) to LM Studio directly"
            )
            return await local_error(client, request, 501, message, "not_implemented")
        stats = self.stats
        stats.request_started()
        outcome = "aborted"
        started = time.monotonic()
        try:
            keep, outcome = await forwarder.forward(client, request, path, hangup)
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
