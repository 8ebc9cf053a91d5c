"""Async client of LM Studio's native v1 REST API: list, load, unload.

Talks HTTP only through the `httpx.AsyncClient` it is given, so tests hand it
an `httpx.MockTransport` or point it at the emulator.

Every failure becomes one of lmkeeperd's ServerError subclasses (see
lmkeeperd/errors.py) with a message that names the URL, the model or the
environment variable involved. LM Studio answers some errors with HTTP 200
(lmstudio-real.md), so an answer is a success only when it is a 2xx whose JSON
has no `error` member; the body decides before the status does:

    transport error / timeout               -> ServerUnreachable
    error.code "invalid_api_key", a message
      about the "LM Studio API token", 401/403 -> AuthError
    "Unexpected endpoint or method"          -> ServerTooOld (0.3.x has no /api/v1)
    404 on /api/v1/models, /api/v0 answering -> ServerTooOld
    load: 404, or an error saying not found  -> ModelNotFound
    load: the guardrail's refusal text       -> LoadRefused (a ServerRefused)
    unload not confirmed by the answer       -> a fresh listing decides:
                                                gone -> ModelNotFound, listed -> ServerRefused
    not JSON, not the shape, over the cap    -> BadResponse
    any other error                          -> ServerRefused (with the server's own message)

Bodies are streamed and capped (MODELS_CAP for the model list, SMALL_CAP for
the rest), so a runaway server cannot inflate the daemon. The API token is held
in a `Secret` (lmkeeperd/secret.py) and sent as a per-request header (httpx
masks it in `Headers` reprs). Errors are raised `from None`, so a traceback
never renders httpx's internals and their locals; any server text quoted in a
message has the token scrubbed out first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx
import structlog

from lmkeeperd.errors import (
    AuthError,
    BadResponse,
    LoadTimedOut,
    ModelNotFound,
    ServerError,
    ServerRefused,
    ServerTooOld,
    ServerUnreachable,
)
from lmkeeperd.lmstudio.models import LoadResult, ModelInfo
from lmkeeperd.lmstudio.transport import TooBig, decoded, describe, printable, read_capped
from lmkeeperd.lmstudio.wire import (
    AUTH_WORDS,
    GUARDRAIL_CHARS,
    UNEXPECTED_ENDPOINT,
    ShapeError,
    error_code,
    error_member,
    load_refused,
    parse_load_result,
    parse_models,
    says_not_found,
    says_refused_for_resources,
)
from lmkeeperd.secret import Secret

log = structlog.get_logger()

MODELS_PATH = "/api/v1/models"
LOAD_PATH = "/api/v1/models/load"
UNLOAD_PATH = "/api/v1/models/unload"
V0_MODELS_PATH = "/api/v0/models"

# Body size caps. The model list of a big library is a few hundred kB; the
# other answers are a few hundred bytes.
MODELS_CAP = 32 * 1024 * 1024
SMALL_CAP = 1024 * 1024

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
        response = await self._send("GET", MODELS_PATH, action="list models", cap=MODELS_CAP)
        problem = await self._problem(response, "list models")
        if problem is not None:
            raise problem
        body = self._json(response, '{"models": [...]}')
        try:
            return parse_models(body)
        except ShapeError as shape:
            raise self._bad_shape(response, '{"models": [...]}', shape) from None

    async def load(self, key: str, load_config: Mapping[str, Any] | None = None) -> LoadResult:
        """Loads `key` and returns when it is loaded; a second load makes a second instance."""
        payload: dict[str, Any] = {**(load_config or {}), "model": key}
        timeout = httpx.Timeout(self._request_timeout, read=self._load_timeout)
        response = await self._send(
            "POST", LOAD_PATH, action=f"load {key}", json=payload, limits=timeout
        )
        problem = await self._problem(response, f"load {key}", model=key)
        if problem is not None:
            raise problem
        body = self._json(response, '{"instance_id": "..."}')
        try:
            return parse_load_result(body)
        except ShapeError as shape:
            raise self._bad_shape(response, '{"instance_id": "..."}', shape) from None

    async def unload(self, instance_id: str) -> None:
        """Unloads one loaded instance (an instance id, not a model key).

        Done only when the answer names the instance. Any other answer (an error body,
        whatever its status; a body naming nothing) is checked against a fresh listing,
        since the documentation does not say what an unknown or already-unloaded instance
        gets: gone -> ModelNotFound (the caller's "already gone"), listed -> ServerRefused.
        """
        action = f"unload {instance_id}"
        response = await self._send(
            "POST", UNLOAD_PATH, action=action, json={"instance_id": instance_id}
        )
        problem = await self._problem(response, action)
        if problem is None:
            body = self._json(response, '{"instance_id": "..."}')
            if isinstance(body, dict) and body.get("instance_id") == instance_id:
                return
            problem = BadResponse(
                f"LM Studio at {self._base_url} answered POST {UNLOAD_PATH} without naming "
                f'the instance it unloaded (expected {{"instance_id": {instance_id!r}}}): '
                f"{self._snippet(response)}",
                status_code=response.status_code,
            )
        if isinstance(problem, AuthError | ServerTooOld | ServerUnreachable):
            raise problem
        try:
            models = await self.list_models()
        except (AuthError, ServerTooOld, ServerUnreachable):
            raise
        except ServerError:
            raise problem from None
        said = self._server_message(response)
        if any(instance_id in model.instance_ids for model in models):
            raise ServerRefused(
                f"LM Studio at {self._base_url} did not unload {instance_id!r} "
                f"(HTTP {response.status_code}: {said}); it still lists it as loaded",
                status_code=response.status_code,
            )
        raise ModelNotFound(
            f"LM Studio at {self._base_url} has no loaded instance {instance_id!r} to unload "
            f"(HTTP {response.status_code}: {said})",
            status_code=response.status_code,
        )

    # ------------------------------------------------------------ transport

    async def _send(
        self,
        method: str,
        path: str,
        *,
        action: str,
        json: Mapping[str, Any] | None = None,
        limits: httpx.Timeout | None = None,
        cap: int = SMALL_CAP,
    ) -> httpx.Response:
        """The whole answer, its body read in full but never beyond `cap` bytes."""
        timeout = limits or httpx.Timeout(self._request_timeout)
        # httpx.Headers, not a dict: its repr masks the token in a traceback's locals.
        headers = httpx.Headers({"Authorization": self._token.bearer()}) if self._token else None
        # httpx's timeouts bound each step (connect, each read), not the whole exchange: a
        # server that trickles its answer a byte at a time would hold the request forever
        # (tests/lmstudio/test_fuzz_client.py). This bounds the whole of it.
        whole = (timeout.connect or 0.0) + (timeout.read or self._request_timeout)
        url = self._base_url + path
        try:
            async with asyncio.timeout(whole):
                async with self._http.stream(
                    method, url, json=json, headers=headers, timeout=timeout
                ) as streamed:
                    body = await read_capped(streamed, cap)
        except TimeoutError:
            log.debug("lmstudio_request_failed", method=method, path=path, error="too slow")
            # A load the server took in may still finish after we stop waiting (L22).
            slow = LoadTimedOut if path == LOAD_PATH else ServerUnreachable
            raise slow(
                f"LM Studio at {self._base_url} did not finish answering the request to "
                f"{action} within {whole:g}s"
            ) from None
        except TooBig as too_big:
            raise BadResponse(
                f"LM Studio at {self._base_url} answered {method} {path} with {too_big}, more "
                f"than the {cap / (1024 * 1024):g} MiB lmkeeperd reads for it; the answer "
                "was dropped",
                status_code=too_big.status_code,
            ) from None
        except httpx.TransportError as error:
            reason = self._scrub(describe(error, method, path, timeout, self._request_timeout))
            log.debug("lmstudio_request_failed", method=method, path=path, error=reason)
            if isinstance(error, httpx.ReadTimeout) and path == LOAD_PATH:
                raise LoadTimedOut(
                    f"LM Studio at {self._base_url} did not answer the request to {action} within "
                    f"{self._load_timeout:g}s (server.load_timeout); it may still be loading"
                ) from None
            message = f"LM Studio is not reachable at {self._base_url}: {reason}"
            raise ServerUnreachable(message) from None
        except httpx.DecodingError:
            raise BadResponse(
                f"LM Studio at {self._base_url} answered {method} {path} with a body that "
                "cannot be decoded (its Content-Encoding does not match it)"
            ) from None
        log.debug("lmstudio_request", method=method, path=path, status=streamed.status_code)
        # Rebuilt from the bytes already read (the decoded body, so no Content-Encoding):
        # parsing and error messages need no second read.
        content_type = streamed.headers.get("content-type")
        return httpx.Response(
            streamed.status_code,
            headers={"content-type": content_type} if content_type else None,
            content=body,
            request=streamed.request,
        )

    async def _raise_if_too_old(self, *, v1_missing: bool = False) -> None:
        """Raises ServerTooOld when v1 is missing but v0 answers: LM Studio before 0.4.

        Real LM Studio says "Unexpected endpoint or method" (with status 200) for a
        missing endpoint, which `_problem` recognises at once. This probe is for a
        server answering a bare 404 instead (one third-party report saw that): a 404
        from load may mean "no such model" or "no such endpoint", and only a 404 on
        `GET /api/v1/models` as well tells the second apart.
        """
        try:
            if not v1_missing:
                v1 = await self._send("GET", MODELS_PATH, action="list models", cap=MODELS_CAP)
                if v1.status_code != 404:
                    return
            v0 = await self._send("GET", V0_MODELS_PATH, action="list models (v0)", cap=MODELS_CAP)
        except ServerError:
            return  # cannot tell; the caller reports the 404 it got
        if v0.status_code == 200 and error_member(decoded(v0)) is None:
            raise ServerTooOld(
                f"LM Studio at {self._base_url} speaks only the old /api/v0 API: "
                "LM Studio 0.4 or newer is needed for load/unload; please update LM Studio",
                status_code=404,
            )

    # ------------------------------------------------------------ answers

    async def _problem(
        self, response: httpx.Response, action: str, *, model: str | None = None
    ) -> ServerError | None:
        """The error this answer is, or None: a success is a 2xx without an `error` member.

        LM Studio's status codes do not tell errors apart (an unknown endpoint is a
        200, lmstudio-real.md), so the body decides first and the status second.
        `model` is the key a load asked for (to recognise "no such model").
        """
        body = decoded(response)
        error = error_member(body)
        status = response.status_code
        if response.is_success and error is None:
            return None
        said = self._server_message(response)
        if status in (401, 403) or error_code(body) == "invalid_api_key" or AUTH_WORDS in said:
            return self._auth_error(response, action)
        if UNEXPECTED_ENDPOINT in said:
            return self._too_old(response, said)
        if model is not None and says_refused_for_resources(said):
            whole = self._server_message(response, limit=GUARDRAIL_CHARS)
            return load_refused(self._base_url, model, status, whole)
        path = response.request.url.path
        if status == 404 and path == MODELS_PATH:
            await self._raise_if_too_old(v1_missing=True)
            return ServerRefused(
                f"The server at {self._base_url} has no {MODELS_PATH} "
                f"(HTTP 404: {said}); is server.url the address of an LM Studio server?",
                status_code=404,
            )
        if model is not None and (status == 404 or says_not_found(body, said, model)):
            if status == 404:
                await self._raise_if_too_old()
            return ModelNotFound(
                f"LM Studio at {self._base_url} has no model {model!r} to load "
                f"(HTTP {status}: {said}); the keys it has are listed by GET {MODELS_PATH}",
                status_code=status,
            )
        return ServerRefused(
            f"LM Studio at {self._base_url} refused to {action} (HTTP {status}): {said}",
            status_code=status,
        )

    def _too_old(self, response: httpx.Response, said: str) -> ServerTooOld:
        request = response.request
        message = (
            f"LM Studio at {self._base_url} does not know {request.method} {request.url.path} "
            f"(it answered: {said}): LM Studio 0.4 or newer is needed for load/unload; "
            "please update LM Studio"
        )
        if self._token is None:
            # Two 0.4.2 reports tie this answer to a request without a token (lmstudio-real.md).
            message += (
                f" (if it is 0.4 already and requires authentication, set {self._token_env} "
                "to its API token)"
            )
        return ServerTooOld(message, status_code=response.status_code)

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

    def _bad_shape(self, response: httpx.Response, expected: str, shape: ShapeError) -> BadResponse:
        return BadResponse(
            f"LM Studio at {self._base_url} answered {response.request.method} "
            f"{response.request.url.path} with an unexpected body (expected {expected}): "
            f"{shape}; the body starts: {self._snippet(response)}",
            status_code=response.status_code,
        )

    def _server_message(self, response: httpx.Response, limit: int = _SNIPPET_CHARS) -> str:
        """The server's own words: JSON `error` (string, or object with `message`), else text."""
        try:
            body = response.json()
        except (ValueError, RecursionError):
            return self._snippet(response)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error.strip():
            return self._shorten(error, limit)
        return self._snippet(response)

    def _snippet(self, response: httpx.Response) -> str:
        text = response.text
        return repr(self._shorten(text)) if text.strip() else "(empty body)"

    def _shorten(self, text: str, limit: int = _SNIPPET_CHARS) -> str:
        # The server's own words enter error messages only through here: one line,
        # no control characters or raw bytes, no token, cut short (transport.printable).
        return printable(self._scrub(text), limit + 1)

    def _scrub(self, text: str) -> str:
        return self._token.scrub(text) if self._token else text
