"""Async client of LM Studio's native v1 REST API: list, load, unload.

Talks HTTP only through the `httpx.AsyncClient` it is given, so tests hand it
an `httpx.MockTransport` or point it at the emulator.

Every failure becomes one of lmkeeperd's ServerError subclasses (see
lmkeeperd/errors.py) with a message that names the URL, the model or the
environment variable involved:

    transport error / timeout     -> ServerUnreachable
    401 / 403                     -> AuthError
    404 on load / unload          -> ModelNotFound  (ServerTooOld if v1 is missing)
    404 on /api/v1/models         -> ServerTooOld when /api/v0/models answers 200
    2xx that is not the shape     -> BadResponse
    any other non-2xx             -> ServerRefused (with the server's own message)

The API token is held in a `Secret` (lmkeeperd/secret.py) and sent as a per-request
header (httpx masks it in `Headers` reprs). Errors are raised `from None`, so a
traceback never renders httpx's internals and their locals; any server text
quoted in a message has the token scrubbed out first.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import os
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self

import httpx
import structlog

from lmkeeperd.errors import (
    AuthError,
    BadResponse,
    ModelNotFound,
    ServerError,
    ServerRefused,
    ServerTooOld,
    ServerUnreachable,
)
from lmkeeperd.lmstudio.models import LoadedInstance, LoadResult, ModelInfo, Quantization
from lmkeeperd.secret import Secret

log = structlog.get_logger()

MODELS_PATH = "/api/v1/models"
LOAD_PATH = "/api/v1/models/load"
UNLOAD_PATH = "/api/v1/models/unload"
V0_MODELS_PATH = "/api/v0/models"

_SNIPPET_CHARS = 200


class LMStudioClient:
    """List, load and unload models on one LM Studio server."""

    __slots__ = (
        "_base_url",
        "_http",
        "_load_timeout",
        "_owns_http",
        "_request_timeout",
        "_token",
        "_token_env",
    )

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: Secret | str | None = None,
        token_env: str = "LM_API_TOKEN",
        request_timeout: float = 10.0,
        load_timeout: float = 600.0,
    ) -> None:
        self._http = http
        self._owns_http = False
        self._base_url = base_url.rstrip("/")
        self._token = Secret.of(token)
        self._token_env = token_env
        self._request_timeout = request_timeout
        self._load_timeout = load_timeout

    @classmethod
    def from_settings(
        cls,
        *,
        base_url: str,
        token_env: str,
        request_timeout: float,
        load_timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> LMStudioClient:
        """A client with its own AsyncClient (closed by `aclose`), token from the environment."""
        # trust_env=False: proxy variables must not route a local server's traffic,
        # and the bearer token, through a proxy; nor may ~/.netrc add credentials.
        http = httpx.AsyncClient(transport=transport, trust_env=False)
        client = cls(
            http,
            base_url=base_url,
            token=Secret.from_env(token_env),
            token_env=token_env,
            request_timeout=request_timeout,
            load_timeout=load_timeout,
        )
        client._owns_http = True
        return client

    @property
    def base_url(self) -> str:
        return self._base_url

    def __repr__(self) -> str:
        token = "set" if self._token else "none"
        return (
            f"LMStudioClient(base_url={self._base_url!r}, token={token}, "
            f"token_env={self._token_env!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the AsyncClient if this client built it; an injected one is its owner's."""
        if self._owns_http:
            await self._http.aclose()

    # ------------------------------------------------------------ operations

    async def list_models(self) -> list[ModelInfo]:
        """Every downloaded model, with what is loaded right now (`loaded_instances`)."""
        response = await self._send("GET", MODELS_PATH, action="list models")
        if response.status_code == 404:
            await self._raise_if_too_old(v1_missing=True)
            raise ServerRefused(
                f"The server at {self._base_url} has no {MODELS_PATH} "
                f"(HTTP 404: {self._server_message(response)}); "
                "is server.url the address of an LM Studio server?",
                status_code=404,
            )
        self._raise_for_status(response, "list models")
        body = self._json(response, '{"models": [...]}')
        try:
            return _parse_models(body)
        except _Shape as shape:
            raise self._bad_shape(response, '{"models": [...]}', shape) from None

    async def load(self, key: str, load_config: Mapping[str, Any] | None = None) -> LoadResult:
        """Loads `key` and returns when it is loaded; a second load makes a second instance."""
        payload: dict[str, Any] = {**(load_config or {}), "model": key}
        timeout = httpx.Timeout(self._request_timeout, read=self._load_timeout)
        response = await self._send(
            "POST", LOAD_PATH, action=f"load {key}", json=payload, limits=timeout
        )
        if response.status_code == 404:
            await self._raise_if_too_old()
            raise ModelNotFound(
                f"LM Studio at {self._base_url} has no model {key!r} to load "
                f"(HTTP 404: {self._server_message(response)}); "
                f"the keys it has are listed by GET {MODELS_PATH}",
                status_code=404,
            )
        self._raise_for_status(response, f"load {key}")
        body = self._json(response, '{"instance_id": "..."}')
        try:
            return _parse_load_result(body)
        except _Shape as shape:
            raise self._bad_shape(response, '{"instance_id": "..."}', shape) from None

    async def unload(self, instance_id: str) -> None:
        """Unloads one loaded instance (an instance id, not a model key)."""
        response = await self._send(
            "POST", UNLOAD_PATH, action=f"unload {instance_id}", json={"instance_id": instance_id}
        )
        if response.status_code == 404:
            await self._raise_if_too_old()
            raise ModelNotFound(
                f"LM Studio at {self._base_url} has no loaded instance {instance_id!r} to unload "
                f"(HTTP 404: {self._server_message(response)})",
                status_code=404,
            )
        self._raise_for_status(response, f"unload {instance_id}")
        # The body ({"instance_id": ...}) tells nothing new: a 2xx is the answer.

    # ------------------------------------------------------------ transport

    async def _send(
        self,
        method: str,
        path: str,
        *,
        action: str,
        json: Mapping[str, Any] | None = None,
        limits: httpx.Timeout | None = None,
    ) -> httpx.Response:
        timeout = limits or httpx.Timeout(self._request_timeout)
        # httpx.Headers, not a dict: its repr masks the token in a traceback's locals.
        headers = httpx.Headers({"Authorization": self._token.bearer()}) if self._token else None
        # httpx's timeouts bound each step (connect, each read), not the whole exchange: a
        # server that trickles its answer a byte at a time would hold the request forever
        # (tests/test_fuzz_client.py). This bounds the whole of it.
        whole = (timeout.connect or 0.0) + (timeout.read or self._request_timeout)
        try:
            async with asyncio.timeout(whole):
                response = await self._http.request(
                    method, self._base_url + path, json=json, headers=headers, timeout=timeout
                )
        except TimeoutError:
            log.debug("lmstudio_request_failed", method=method, path=path, error="too slow")
            raise ServerUnreachable(
                f"LM Studio at {self._base_url} did not finish answering the request to "
                f"{action} within {whole:g}s"
            ) from None
        except httpx.TransportError as error:
            reason = self._describe(error, method, path, timeout)
            log.debug("lmstudio_request_failed", method=method, path=path, error=reason)
            if isinstance(error, httpx.ReadTimeout) and path == LOAD_PATH:
                message = (
                    f"LM Studio at {self._base_url} did not answer the request to {action} within "
                    f"{self._load_timeout:g}s (server.load_timeout); it may still be loading"
                )
            else:
                message = f"LM Studio is not reachable at {self._base_url}: {reason}"
            raise ServerUnreachable(message) from None
        log.debug("lmstudio_request", method=method, path=path, status=response.status_code)
        if response.status_code in (401, 403):
            raise self._auth_error(response, action)
        return response

    def _describe(
        self, error: httpx.TransportError, method: str, path: str, timeout: httpx.Timeout
    ) -> str:
        if isinstance(error, httpx.TimeoutException):
            limit = {
                httpx.ReadTimeout: timeout.read,
                httpx.WriteTimeout: timeout.write,
                httpx.PoolTimeout: timeout.pool,
            }.get(type(error), timeout.connect)
            return f"{method} {path} timed out after {limit or self._request_timeout:g}s"
        # httpx wraps httpcore's error, which wraps the OSError with the real cause.
        cause: BaseException | None = error
        for _ in range(6):
            if cause is None:
                break
            code = cause.errno if isinstance(cause, OSError) else None
            if code is not None and code in errno_codes.errorcode:
                return os.strerror(code).lower()
            cause = cause.__cause__ or cause.__context__
        text = str(error).strip()
        if text.startswith("[Errno"):
            text = text.partition("]")[2].strip()
        text = text[:1].lower() + text[1:]
        return self._scrub(text[:_SNIPPET_CHARS]) or type(error).__name__

    async def _raise_if_too_old(self, *, v1_missing: bool = False) -> None:
        """Raises ServerTooOld when v1 is missing but v0 answers: LM Studio before 0.4.

        A 404 from load/unload may mean "no such model" or "no such endpoint"; only
        a 404 on `GET /api/v1/models` as well tells the second apart.
        """
        try:
            if not v1_missing:
                v1 = await self._send("GET", MODELS_PATH, action="list models")
                if v1.status_code != 404:
                    return
            v0 = await self._send("GET", V0_MODELS_PATH, action="list models (v0)")
        except ServerError:
            return  # cannot tell; the caller reports the 404 it got
        if v0.status_code == 200:
            raise ServerTooOld(
                f"LM Studio at {self._base_url} speaks only the old /api/v0 API: "
                "LM Studio 0.4 or newer is needed for load/unload; please update LM Studio",
                status_code=404,
            )

    # ------------------------------------------------------------ answers

    def _raise_for_status(self, response: httpx.Response, action: str) -> None:
        if response.is_success:
            return
        raise ServerRefused(
            f"LM Studio at {self._base_url} refused to {action} "
            f"(HTTP {response.status_code}): {self._server_message(response)}",
            status_code=response.status_code,
        )

    def _auth_error(self, response: httpx.Response, action: str) -> AuthError:
        said = self._server_message(response)
        if self._token is None:
            advice = f"it requires an API token; set {self._token_env} to the server's API token"
        else:
            advice = (
                f"the token in {self._token_env} was refused; "
                "set it to the API token shown in LM Studio's server settings"
            )
        return AuthError(
            f"LM Studio at {self._base_url} would not {action} "
            f"(HTTP {response.status_code}: {said}): {advice}",
            status_code=response.status_code,
        )

    def _json(self, response: httpx.Response, expected: str) -> Any:
        try:
            return response.json()
        except (ValueError, RecursionError):
            raise BadResponse(
                f"LM Studio at {self._base_url} answered {response.request.method} "
                f"{response.request.url.path} with something that is not JSON "
                f"(expected {expected}): {self._snippet(response)}",
                status_code=response.status_code,
            ) from None

    def _bad_shape(self, response: httpx.Response, expected: str, shape: _Shape) -> BadResponse:
        return BadResponse(
            f"LM Studio at {self._base_url} answered {response.request.method} "
            f"{response.request.url.path} with an unexpected body (expected {expected}): "
            f"{shape}; the body starts: {self._snippet(response)}",
            status_code=response.status_code,
        )

    def _server_message(self, response: httpx.Response) -> str:
        """The server's own words: JSON `error` (string, or object with `message`), else text."""
        try:
            body = response.json()
        except (ValueError, RecursionError):
            return self._snippet(response)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error.strip():
            return self._shorten(error)
        return self._snippet(response)

    def _snippet(self, response: httpx.Response) -> str:
        text = response.text
        return repr(self._shorten(text)) if text.strip() else "(empty body)"

    def _shorten(self, text: str) -> str:
        flat = " ".join(self._scrub(text).split())
        return flat if len(flat) <= _SNIPPET_CHARS else flat[:_SNIPPET_CHARS] + "…"

    def _scrub(self, text: str) -> str:
        return self._token.scrub(text) if self._token else text


# ---------------------------------------------------------------- wire format -> records


class _Shape(Exception):
    """A field of a 2xx body is missing or has the wrong type; the message names it."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _required_str(item: Mapping[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise _Shape(f"{where}{name}: expected a non-empty string, got {_kind(value)}")
    return value


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _optional_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _optional_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _frozen_mapping(value: object) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if isinstance(value, dict) else MappingProxyType({})


def _quantization(value: object) -> Quantization | None:
    if isinstance(value, dict):
        return Quantization(
            name=_optional_str(value.get("name")),
            bits_per_weight=_optional_float(value.get("bits_per_weight")),
        )
    if isinstance(value, str):  # the v0 shape, in case a server mixes them
        return Quantization(name=value)
    return None


def _instances(value: object, where: str) -> tuple[LoadedInstance, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Shape(f"{where}loaded_instances: expected a list, got {_kind(value)}")
    instances = []
    for index, item in enumerate(value):
        here = f"{where}loaded_instances[{index}]."
        if not isinstance(item, dict):
            raise _Shape(f"{here[:-1]}: expected an object, got {_kind(item)}")
        instances.append(
            LoadedInstance(
                id=_required_str(item, "id", here), config=_frozen_mapping(item.get("config"))
            )
        )
    return tuple(instances)


def _parse_models(body: object) -> list[ModelInfo]:
    """`GET /api/v1/models`'s body as records; raises _Shape naming a bad required field."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise _Shape(f"models: expected a list, got {_kind(models)}")
    parsed = []
    for index, item in enumerate(models):
        where = f"models[{index}]."
        if not isinstance(item, dict):
            raise _Shape(f"models[{index}]: expected an object, got {_kind(item)}")
        parsed.append(
            ModelInfo(
                key=_required_str(item, "key", where),
                type=_optional_str(item.get("type")) or "llm",
                publisher=_optional_str(item.get("publisher")),
                display_name=_optional_str(item.get("display_name")),
                architecture=_optional_str(item.get("architecture")),
                quantization=_quantization(item.get("quantization")),
                size_bytes=_optional_int(item.get("size_bytes")),
                params_string=_optional_str(item.get("params_string")),
                format=_optional_str(item.get("format")),
                max_context_length=_optional_int(item.get("max_context_length")),
                loaded_instances=_instances(item.get("loaded_instances"), where),
            )
        )
    return parsed


def _parse_load_result(body: object) -> LoadResult:
    """`POST /api/v1/models/load`'s body as a record; raises _Shape if it has no instance id."""
    if not isinstance(body, dict):
        raise _Shape(f"expected an object, got {_kind(body)}")
    load_config = body.get("load_config")
    return LoadResult(
        instance_id=_required_str(body, "instance_id", ""),
        type=_optional_str(body.get("type")),
        load_time_seconds=_optional_float(body.get("load_time_seconds")),
        status=_optional_str(body.get("status")),
        load_config=_frozen_mapping(load_config) if isinstance(load_config, dict) else None,
    )
