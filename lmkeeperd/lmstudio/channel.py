"""Async RPC client of LM Studio's websocket channel (the one `lms ps` and the SDKs use).

Protocol: ../../docs/emulator.md and lmstudio-ws.md. One `LMStudioChannel` is one
socket to one namespace (`/llm` by default) at the REST base URL's host and port
(http -> ws, https -> wss). `connect()` opens it and sends the auth frame; then
`call()` sends an `rpcCall` and waits for its `rpcResult`/`rpcError`.

Failures, all under ServerError (lmkeeperd/errors.py):

    refused / unreachable / dropped        -> ServerUnreachable
    upgrade answered as an unknown GET      -> ChannelMissing   (no channel: old or not LM Studio)
    auth refused, 401/403, bad token shape  -> AuthError        (names the env var, never the token)
    unknown endpoint (communicationWarning) -> RpcMissing       (at once, when the warning arrives)
    rpcError                                -> RpcFailed
      ...saying no instance matches         -> InstanceNotLoaded (an RpcFailed)
    no answer in time                       -> RpcTimeout
    not JSON / not the shape / too big      -> BadResponse

An unknown endpoint is never answered, only warned about, and the warning names
the endpoint but not the callId: pending calls to that endpoint fail with
RpcMissing. Servers stop warning after 5 warnings per connection; past that the
per-call timeout is what ends a call.

Secrets: the passkey lives in `Credentials` (masked repr); websockets' own debug
logging, which would print the auth frame, is held at WARNING for our connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from lmkeeperd.errors import (
    AuthError,
    BadResponse,
    ChannelError,
    ChannelMissing,
    InstanceNotLoaded,
    RpcFailed,
    RpcMissing,
    RpcTimeout,
    ServerUnreachable,
)
from lmkeeperd.lmstudio.channel_records import (
    Credentials,
    InstanceInfo,
    ProcessingState,
    credentials_from_token,
)

# A listLoaded of a few hundred instances is well under 1 MiB; a runaway server is cut.
MAX_FRAME_BYTES = 4 * 1024 * 1024
_ENDPOINT_IN_WARNING = re.compile(r"endpoint(?:Name)? = ([^,\s]+)")
_SNIPPET_CHARS = 200

# websockets logs every frame at DEBUG, the auth frame (and its passkey) included.
_WIRE_LOG = logging.getLogger("lmkeeperd.lmstudio.channel.wire")
_WIRE_LOG.setLevel(logging.WARNING)

_OMIT: Any = object()
# The rpcError codes that mean "no loaded instance matches" (lmstudio-ws.md, "Error object").
NOT_LOADED_CODES = frozenset({"generic.noModelMatchingQuery", "generic.specificModelUnloaded"})

__all__ = [
    "Credentials",
    "InstanceInfo",
    "LMStudioChannel",
    "ProcessingState",
    "channel_url",
    "credentials_from_token",
]


def channel_url(base_url: str, namespace: str = "/llm") -> str:
    """`ws://host:port/llm` from the REST base URL; ValueError for anything but http(s)."""
    split = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(split.scheme)
    if scheme is None or not split.netloc:
        raise ValueError(f"server URL {base_url!r} must start with http:// or https://")
    return f"{scheme}://{split.netloc}{namespace}"


class LMStudioChannel:
    """One authenticated socket to one namespace of LM Studio's websocket channel."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None = None,
        token_env: str = "LM_API_TOKEN",
        namespace: str = "/llm",
        call_timeout: float = 5.0,
        open_timeout: float = 10.0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.url = channel_url(base_url, namespace)
        self._credentials = credentials_from_token(token, token_env)
        self._token_env = token_env
        self._call_timeout = call_timeout
        self._open_timeout = open_timeout
        self._max_frame_bytes = max_frame_bytes
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._lost: Exception | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"LMStudioChannel({self.url}, {state}, guest={self._credentials.guest})"

    @property
    def is_open(self) -> bool:
        return self._ws is not None and self._lost is None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket and authenticate; see the module docstring for the errors."""
        if self._ws is not None:
            raise RuntimeError("connect() on a channel already connected")
        try:
            ws = await connect(
                self.url,
                compression=None,
                # A local LM Studio is never reached through a proxy from the environment.
                proxy=None,
                open_timeout=self._open_timeout,
                # Our own calls (about once a second while watching) show a dead socket;
                # pings would be traffic while idle.
                ping_interval=None,
                close_timeout=1.0,
                max_size=self._max_frame_bytes,
                logger=_WIRE_LOG,
            )
        except InvalidStatus as exc:
            raise self._refused_upgrade(exc) from None
        except (InvalidHandshake, InvalidURI) as exc:
            raise ChannelMissing(f"{self.url} is not a websocket channel: {exc}") from None
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ServerUnreachable(f"LM Studio is not reachable at {self.url}: {reason}") from None
        try:
            await self._authenticate(ws)
        except asyncio.CancelledError:
            ws.transport.abort()
            raise
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws), name="lmstudio-channel-reader")

    def _refused_upgrade(self, exc: InvalidStatus) -> Exception:
        status = exc.response.status_code
        body = exc.response.body or b""
        text = self._scrub(body[:_SNIPPET_CHARS].decode("utf-8", "replace"))
        if status in (401, 403):
            return AuthError(
                f"LM Studio at {self.url} refused the websocket connection (HTTP {status}); "
                f"check the token in ${self._token_env}",
                status_code=status,
            )
        return ChannelMissing(
            f"LM Studio at {self.url} has no websocket channel (HTTP {status} to the upgrade: "
            f"{text or 'no body'}); server activity needs LM Studio 0.3.27 or newer",
            status_code=status,
        )

    async def _authenticate(self, ws: ClientConnection) -> None:
        try:
            await ws.send(json.dumps(self._credentials.frame()))
            raw = await asyncio.wait_for(ws.recv(), self._open_timeout)
        except (ConnectionClosed, OSError) as exc:
            raise ServerUnreachable(
                f"LM Studio at {self.url} closed the websocket during authentication: "
                f"{type(exc).__name__}"
            ) from None
        except TimeoutError:
            raise ServerUnreachable(
                f"LM Studio at {self.url} did not answer the websocket authentication "
                f"within {self._open_timeout} s"
            ) from None
        reply = _parse(raw)
        if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
            raise BadResponse(f"{self.url}: not an auth answer: {self._scrub(_snippet(raw))}")
        if reply["success"]:
            return
        error = self._scrub(str(reply.get("error", "no reason given"))[:_SNIPPET_CHARS])
        hint = (
            f"LM Studio requires an API token: set ${self._token_env}"
            if self._credentials.guest
            else f"check the token in ${self._token_env}"
        )
        raise AuthError(f"LM Studio at {self.url} refused the websocket channel: {error} ({hint})")

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        reader, self._reader = self._reader, None
        closed = False
        try:
            if reader is not None:
                reader.cancel()
                # wait(), not `await reader`: the reader's CancelledError stays in the
                # reader, while a cancellation of whoever is closing still reaches them.
                await asyncio.wait([reader])
            if ws is not None:
                await ws.close()
            closed = True
        finally:
            if ws is not None and not closed:
                ws.transport.abort()  # cancelled mid-close: never leave the socket open
            self._fail_all(ServerUnreachable(f"the channel to {self.url} was closed"))

    async def call(
        self,
        endpoint: str,
        parameter: Any = _OMIT,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """One rpcCall; its result (None when absent). Omit `parameter` for endpoints with none."""
        ws = self._ws
        if ws is None or self._lost is not None:
            raise self._lost or ServerUnreachable(f"the channel to {self.url} is not open")
        call_id, self._next_id = self._next_id, self._next_id + 1
        message: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": call_id}
        if parameter is not _OMIT:
            message["parameter"] = parameter
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (endpoint, future)
        limit = self._call_timeout if timeout is None else timeout
        try:
            await ws.send(json.dumps(message))
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            message_ = f"LM Studio at {self.url} did not answer {endpoint} within {limit} s"
            raise RpcTimeout(message_) from None
        except ConnectionClosed:
            raise self._lost or ServerUnreachable(f"the channel to {self.url} closed") from None
        finally:
            self._pending.pop(call_id, None)

    async def list_loaded(self) -> list[InstanceInfo]:
        result = await self.call("listLoaded")
        if not isinstance(result, list):
            raise BadResponse(f"{self.url}: listLoaded is not a list: {_snippet(result)}")
        return [InstanceInfo.from_wire(entry) for entry in result]

    async def processing_state(
        self, *, reference: str | None = None, identifier: str | None = None
    ) -> ProcessingState | None:
        """The instance's state, by instanceReference or identifier; None when not loaded."""
        try:
            result = await self.call("getInstanceProcessingState", _lookup(reference, identifier))
        except InstanceNotLoaded:
            return None
        # A server ignoring the flag may still leave the result out for "not found".
        return None if result is None else ProcessingState.from_wire(result)

    async def model_info(
        self, *, reference: str | None = None, identifier: str | None = None
    ) -> InstanceInfo | None:
        """`getModelInfo` for one instance, as `processing_state` finds it; None when not loaded."""
        try:
            result = await self.call("getModelInfo", _lookup(reference, identifier))
        except InstanceNotLoaded:
            return None
        return None if result is None else InstanceInfo.from_wire(result)

    # -- the reader --------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._dispatch(_parse(raw))
            self._lose(ServerUnreachable(f"LM Studio closed the channel at {self.url}"))
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                self._lose(
                    BadResponse(f"{self.url} sent a frame over {self._max_frame_bytes} bytes")
                )
            else:
                self._lose(ServerUnreachable(f"the channel to {self.url} was cut: {exc}"))

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, Mapping):
            return
        kind = message.get("type")
        if kind == "rpcResult" or kind == "rpcError":
            pending = self._pending.get(message.get("callId"))  # type: ignore[arg-type]
            if pending is None or pending[1].done():
                return
            endpoint, future = pending
            if kind == "rpcResult":
                future.set_result(message.get("result"))
            else:
                future.set_exception(self._rpc_failed(endpoint, message.get("error")))
        elif kind == "communicationWarning":
            self._warned(message)

    def _warned(self, message: Mapping[str, Any]) -> None:
        text = str(message.get("warning", ""))
        found = _ENDPOINT_IN_WARNING.search(text)
        if found is not None:
            victims = [p for p in self._pending.values() if p[0] == found.group(1)]
        else:
            victims = list(self._pending.values()) if len(self._pending) == 1 else []
        for endpoint, future in victims:
            if future.done():
                continue
            if "unknown endpoint" in text or message.get("kind") == "rpcEndpointUnknown":
                future.set_exception(
                    RpcMissing(
                        f"LM Studio at {self.url} does not know {endpoint}: "
                        "server activity needs LM Studio 0.3.27 or newer"
                    )
                )
            else:
                future.set_exception(
                    ChannelError(f"LM Studio at {self.url} rejected {endpoint}: {text[:200]}")
                )

    def _rpc_failed(self, endpoint: str, error: Any) -> RpcFailed:
        error = error if isinstance(error, Mapping) else {}
        title = str(error.get("title", "no title"))[:_SNIPPET_CHARS]
        display = error.get("displayData")
        code = display.get("code") if isinstance(display, Mapping) else None
        code = code if isinstance(code, str) else None
        message = f"LM Studio at {self.url} failed {endpoint}: {title}"
        kind = InstanceNotLoaded if code in NOT_LOADED_CODES else RpcFailed
        return kind(message + (f" ({code})" if code else ""), title=title, code=code)

    def _lose(self, error: Exception) -> None:
        self._lost = error
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _scrub(self, text: str) -> str:
        return text.replace(self._credentials.passkey, "***")


def _lookup(reference: str | None, identifier: str | None) -> dict[str, Any]:
    """`{specifier, throwIfNotFound: true}`, as the official SDKs send it: "not found" comes
    back as an rpcError (InstanceNotLoaded), never as a missing result."""
    if (reference is None) == (identifier is None):
        raise ValueError("give exactly one of reference or identifier")
    specifier: dict[str, Any] = (
        {"type": "instanceReference", "instanceReference": reference}
        if reference is not None
        else {"type": "query", "query": {"identifier": identifier}}
    )
    return {"specifier": specifier, "throwIfNotFound": True}


def _parse(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _snippet(value: Any) -> str:
    return repr(value)[:_SNIPPET_CHARS]
