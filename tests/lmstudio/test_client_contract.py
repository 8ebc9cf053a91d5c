"""Contract tests of LMStudioClient, run against two servers that speak lmstudio-api.md.

`mock`: an in-process fake behind `httpx.MockTransport`, written here from the
documented shapes and the answers recorded from real LM Studio releases in
lmstudio-real.md (unknown endpoints: 200 with an `error` body; auth refusals;
embedding models with fewer fields), and able to send bodies no real server
should: garbled, truncated, wrong shapes, endless. `emulator`: lmkeeperd's
emulator over real HTTP on 127.0.0.1. Every test taking the `backend` fixture
runs against both; tests that need an injection only one of them offers take
`fake` or `emu` directly.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import json
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import httpx
import pytest
from structlog.testing import capture_logs

from lmkeeperd.emulator import Emulator
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
from lmkeeperd.lmstudio.client import MODELS_CAP, SMALL_CAP, LMStudioClient
from lmkeeperd.lmstudio.models import LoadResult, ModelInfo

QWEN = "qwen/qwen3-4b-2507"
EMBEDDER = "text-embedding-nomic-embed-text-v1.5"
TOKEN_ENV = "LM_API_TOKEN"
TOKEN = "sk-lm-Zq8VxT3pW9rK2mN7:Yb4Hc6Jd1Lf5Gs0A"


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def failure(call: Awaitable[object]) -> ServerError:
    """The ServerError `call` raises. Holds no token in its locals (traceback tests render them)."""
    try:
        await call
    except ServerError as error:
        return error
    raise AssertionError("expected a ServerError")


# ---------------------------------------------------------------- the fake behind MockTransport

# Recorded answers (lmstudio-real.md): no token (0.4.18, quoted in opencode-lmstudio #41).
MISSING_TOKEN_BODY = {
    "error": {
        "type": "invalid_request",
        "code": "invalid_api_key",
        "message": "An LM Studio API token is required to make requests to this server.",
    }
}


def unexpected(request: httpx.Request) -> httpx.Response:
    """LM Studio's answer to an endpoint or method it does not serve: HTTP 200 (#618, #1323)."""
    message = f"Unexpected endpoint or method. ({request.method} {request.url.path})"
    return httpx.Response(200, json={"error": message})


def _model_entry(key: str, instances: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    if key == EMBEDDER:
        return {
            "type": "embedding",
            "publisher": "nomic-ai",
            "key": key,
            "display_name": "Nomic Embed Text v1.5",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
            "size_bytes": 84106624,
            "params_string": None,
            "loaded_instances": [{"id": i, "config": c} for i, c in instances],
            "max_context_length": 2048,
            "format": "gguf",
        }
    return {
        "type": "llm",
        "publisher": "qwen",
        "key": key,
        "display_name": "Qwen3 4B 2507",
        "architecture": "qwen3",
        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
        "size_bytes": 2497280256,
        "params_string": "4B",
        "loaded_instances": [{"id": i, "config": c} for i, c in instances],
        "max_context_length": 262144,
        "format": "gguf",
        "capabilities": {"vision": False, "trained_for_tool_use": True},
    }


class FakeLMStudio:
    """lmstudio-api.md as a MockTransport handler, plus raw answers for malformed-body tests."""

    url = "http://lmstudio.test:1234"

    def __init__(self) -> None:
        self.catalog = [QWEN, EMBEDDER]
        self.instances: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.token: str | None = None
        self.v0_only = False
        self.old_style = "real"  # "real": 200 "Unexpected endpoint"; "404": a bare 404
        self.down = False
        self.error_style = "object"
        self.failures: list[tuple[int, str]] = []
        self.raw: dict[str, httpx.Response] = {}  # path -> canned answer
        self.seen: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            raise httpx.ConnectError("All connection attempts failed", request=request) from refused
        self.seen.append(request)
        path = request.url.path
        if self.token is not None:
            scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not supplied:
                return httpx.Response(401, json=MISSING_TOKEN_BODY)
            if supplied != self.token:
                return self.error(401, "Malformed LM Studio API token provided.")
        if path in self.raw:
            return self.raw[path]
        if self.v0_only and path.startswith("/api/v1/"):
            if self.old_style == "404":
                return httpx.Response(404, text="Not Found")
            return unexpected(request)
        body: dict[str, Any] = json.loads(request.content) if request.content else {}
        if (request.method, path) == ("GET", "/api/v1/models"):
            models = [_model_entry(k, self.instances.get(k, [])) for k in self.catalog]
            return httpx.Response(200, json={"models": models})
        if (request.method, path) == ("GET", "/api/v0/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        if (request.method, path) == ("POST", "/api/v1/models/load"):
            return self.load(body)
        if (request.method, path) == ("POST", "/api/v1/models/unload"):
            return self.unload(body["instance_id"])
        return unexpected(request)

    def load(self, body: dict[str, Any]) -> httpx.Response:
        key = body.pop("model")
        if key not in self.catalog:
            return self.error(404, f"model '{key}' not found")
        if self.failures:
            status, message = self.failures.pop(0)
            return self.error(status, message)
        taken = {i for i, _ in self.instances.get(key, [])}
        instance_id, n = key, 1
        while instance_id in taken:
            n += 1
            instance_id = f"{key}:{n}"
        self.instances.setdefault(key, []).append((instance_id, body))
        answer = {"type": "llm", "instance_id": instance_id, "load_time_seconds": 1.5}
        return httpx.Response(200, json={**answer, "status": "loaded"})

    def unload(self, instance_id: str) -> httpx.Response:
        for instances in self.instances.values():
            for entry in instances:
                if entry[0] == instance_id:
                    instances.remove(entry)
                    return httpx.Response(200, json={"instance_id": instance_id})
        return self.error(404, f"no loaded instance with id '{instance_id}'")

    def error(self, status: int, message: str) -> httpx.Response:
        if self.error_style == "string":
            return httpx.Response(status, json={"error": message})
        return httpx.Response(status, json={"error": {"message": message, "type": "x"}})


# ---------------------------------------------------------------- backends


class Backend(Protocol):
    url: str

    def client(
        self, *, request_timeout: float = 5.0, load_timeout: float = 30.0
    ) -> LMStudioClient: ...

    def set_token(self, token: str | None) -> None: ...
    def set_v0_only(self, on: bool) -> None: ...
    def set_error_style(self, style: str) -> None: ...
    def fail_next_load(self, status: int, message: str) -> None: ...
    def go_down(self) -> None: ...
    def loaded(self) -> dict[str, list[str]]: ...


class MockBackend:
    def __init__(self, fake: FakeLMStudio) -> None:
        self.fake = fake
        self.url = fake.url

    def client(self, *, request_timeout: float = 5.0, load_timeout: float = 30.0) -> LMStudioClient:
        return LMStudioClient.from_settings(
            base_url=self.url,
            token_env=TOKEN_ENV,
            request_timeout=request_timeout,
            load_timeout=load_timeout,
            transport=self.fake.transport(),
        )

    def set_token(self, token: str | None) -> None:
        self.fake.token = token

    def set_v0_only(self, on: bool) -> None:
        self.fake.v0_only = on

    def set_error_style(self, style: str) -> None:
        self.fake.error_style = style

    def fail_next_load(self, status: int, message: str) -> None:
        self.fake.failures.append((status, message))

    def go_down(self) -> None:
        self.fake.down = True

    def loaded(self) -> dict[str, list[str]]:
        return {k: [i for i, _ in v] for k, v in self.fake.instances.items() if v}


class EmulatorBackend:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.url = emu.url

    def client(self, *, request_timeout: float = 5.0, load_timeout: float = 30.0) -> LMStudioClient:
        return LMStudioClient.from_settings(
            base_url=self.url,
            token_env=TOKEN_ENV,
            request_timeout=request_timeout,
            load_timeout=load_timeout,
        )

    def set_token(self, token: str | None) -> None:
        self.emu.set_token(token)

    def set_v0_only(self, on: bool) -> None:
        self.emu.set_v0_only(on)

    def set_error_style(self, style: str) -> None:
        self.emu.set_error_style(style)

    def fail_next_load(self, status: int, message: str) -> None:
        self.emu.fail_next_loads(1, message, status=status)

    def go_down(self) -> None:
        self.emu.go_down()

    def loaded(self) -> dict[str, list[str]]:
        return self.emu.loaded()


@pytest.fixture(autouse=True)
def _no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def fake() -> FakeLMStudio:
    return FakeLMStudio()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(params=["mock", "emulator"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "mock":
        yield MockBackend(FakeLMStudio())
    else:
        with Emulator() as emulator:
            yield EmulatorBackend(emulator)


# ---------------------------------------------------------------- the contract, on both backends


def test_list_models_parses_documented_fields(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.client() as client:
            models = {m.key: m for m in await client.list_models()}
        qwen = models[QWEN]
        assert qwen.type == "llm"
        assert qwen.publisher == "qwen"
        assert qwen.size_bytes is not None and qwen.size_bytes > 0
        assert qwen.quantization is not None and qwen.quantization.name
        assert isinstance(qwen.quantization.bits_per_weight, float)
        assert qwen.max_context_length is not None and qwen.max_context_length > 0
        assert qwen.loaded_instances == ()
        assert any(m.type == "embedding" for m in models.values())

    run(scenario())


def test_load_returns_the_instance_id_and_listing_shows_it(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.client() as client:
            result = await client.load(QWEN)
            models = {m.key: m for m in await client.list_models()}
        assert result.instance_id == QWEN
        assert models[QWEN].instance_ids == (QWEN,)
        assert backend.loaded() == {QWEN: [QWEN]}

    run(scenario())


def test_second_load_makes_a_second_instance(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.client() as client:
            first = await client.load(QWEN)
            second = await client.load(QWEN)
            models = {m.key: m for m in await client.list_models()}
        assert first.instance_id != second.instance_id
        assert set(models[QWEN].instance_ids) == {first.instance_id, second.instance_id}

    run(scenario())


def test_load_passes_load_settings_through(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.client() as client:
            await client.load(QWEN, {"context_length": 4096, "flash_attention": False})
            models = {m.key: m for m in await client.list_models()}
        (instance,) = models[QWEN].loaded_instances
        assert instance.config["context_length"] == 4096
        assert instance.config["flash_attention"] is False

    run(scenario())


def test_unload_removes_the_instance(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.client() as client:
            first = await client.load(QWEN)
            second = await client.load(QWEN)
            await client.unload(first.instance_id)
            models = {m.key: m for m in await client.list_models()}
        assert models[QWEN].instance_ids == (second.instance_id,)

    run(scenario())


def test_load_of_unknown_key_is_model_not_found_naming_it(backend: Backend) -> None:
    async def scenario() -> ServerError:
        async with backend.client() as client:
            return await failure(client.load("nobody/no-such-model"))

    error = run(scenario())
    assert isinstance(error, ModelNotFound)
    assert "nobody/no-such-model" in str(error)
    assert error.status_code == 404


def test_unload_of_unknown_instance_is_model_not_found_naming_it(backend: Backend) -> None:
    async def scenario() -> ServerError:
        async with backend.client() as client:
            return await failure(client.unload("qwen/qwen3-4b-2507:9"))

    error = run(scenario())
    assert isinstance(error, ModelNotFound)
    assert "qwen/qwen3-4b-2507:9" in str(error)


def test_missing_token_says_which_env_var_to_set(backend: Backend) -> None:
    backend.set_token(TOKEN)

    async def scenario() -> ServerError:
        async with backend.client() as client:
            return await failure(client.list_models())

    error = run(scenario())
    assert isinstance(error, AuthError)
    assert error.status_code == 401
    assert f"set {TOKEN_ENV} to the server's API token" in str(error)
    assert backend.url in str(error)


def test_wrong_token_says_the_token_in_the_env_var_was_refused(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.set_token(TOKEN)
    monkeypatch.setenv(TOKEN_ENV, "sk-lm-wrong:token")

    async def scenario() -> ServerError:
        async with backend.client() as client:
            return await failure(client.list_models())

    error = run(scenario())
    assert isinstance(error, AuthError)
    assert f"the token in {TOKEN_ENV} was refused" in str(error)
    assert "sk-lm-wrong:token" not in str(error)


def test_right_token_is_sent_and_accepted(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.set_token(TOKEN)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)

    async def scenario() -> None:
        async with backend.client() as client:
            await client.load(QWEN)
            assert QWEN in {m.key for m in await client.list_models()}

    run(scenario())


@pytest.mark.parametrize("operation", ["list", "load", "unload"])
def test_v0_only_server_is_too_old(backend: Backend, operation: str) -> None:
    backend.set_v0_only(True)  # a 0.3.x server: 200 "Unexpected endpoint or method" on v1

    async def scenario() -> ServerError:
        async with backend.client() as client:
            if operation == "list":
                return await failure(client.list_models())
            if operation == "load":
                return await failure(client.load(QWEN))
            return await failure(client.unload(QWEN))

    error = run(scenario())
    assert isinstance(error, ServerTooOld)
    assert "LM Studio 0.4 or newer is needed" in str(error)


def test_server_down_is_unreachable_naming_the_url(backend: Backend) -> None:
    async def scenario() -> ServerError:
        async with backend.client() as client:
            await client.list_models()  # a connection is pooled before it goes away
            backend.go_down()
            return await failure(client.list_models())

    error = run(scenario())
    assert isinstance(error, ServerUnreachable)
    assert f"LM Studio is not reachable at {backend.url}" in str(error)
    assert "connection refused" in str(error)


@pytest.mark.parametrize("style", ["string", "object"])
def test_failed_load_carries_status_and_the_servers_message(backend: Backend, style: str) -> None:
    backend.set_error_style(style)
    backend.fail_next_load(507, "not enough memory to load this model")

    async def scenario() -> ServerError:
        async with backend.client() as client:
            return await failure(client.load(QWEN))

    error = run(scenario())
    assert isinstance(error, ServerRefused)
    assert error.status_code == 507
    assert "not enough memory to load this model" in str(error)
    assert QWEN in str(error)


# ---------------------------------------------------------------- the token never shows


def _scenarios() -> dict[
    str, Callable[[Backend, pytest.MonkeyPatch], Callable[[LMStudioClient], Awaitable[object]]]
]:
    def auth_wrong(
        b: Backend, mp: pytest.MonkeyPatch
    ) -> Callable[[LMStudioClient], Awaitable[object]]:
        b.set_token("sk-lm-the-servers-own:token-value")
        return lambda c: c.list_models()

    def not_found(
        b: Backend, mp: pytest.MonkeyPatch
    ) -> Callable[[LMStudioClient], Awaitable[object]]:
        b.set_token(TOKEN)
        return lambda c: c.load("nobody/nothing")

    def refused(
        b: Backend, mp: pytest.MonkeyPatch
    ) -> Callable[[LMStudioClient], Awaitable[object]]:
        b.set_token(TOKEN)
        b.fail_next_load(500, "boom")
        return lambda c: c.load(QWEN)

    def too_old(
        b: Backend, mp: pytest.MonkeyPatch
    ) -> Callable[[LMStudioClient], Awaitable[object]]:
        b.set_token(TOKEN)
        b.set_v0_only(True)
        return lambda c: c.unload(QWEN)

    def down(b: Backend, mp: pytest.MonkeyPatch) -> Callable[[LMStudioClient], Awaitable[object]]:
        b.go_down()
        return lambda c: c.list_models()

    return {f.__name__: f for f in (auth_wrong, not_found, refused, too_old, down)}


@pytest.mark.parametrize("scenario_name", list(_scenarios()))
def test_token_never_appears_in_errors_reprs_tracebacks_or_logs(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, scenario_name: str
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    call = _scenarios()[scenario_name](backend, monkeypatch)

    async def scenario() -> tuple[ServerError, str]:
        async with backend.client() as client:
            return await failure(call(client)), repr(client)

    with capture_logs() as logs:
        error, client_repr = run(scenario())

    rendered = [
        str(error),
        repr(error),
        client_repr,
        repr(logs),
        *traceback.format_exception(error),
    ]
    assert logs, "the client logs its requests at debug level"
    for text in rendered:
        assert TOKEN not in text
    # structlog's console renderer shows tracebacks through rich, locals included, when rich
    # is installed (a test extra since the CLI no longer pulls it in through typer).
    console_module = pytest.importorskip("rich.console")
    traceback_module = pytest.importorskip("rich.traceback")
    console = console_module.Console(record=True, width=200, file=io.StringIO())
    console.print(
        traceback_module.Traceback.from_exception(
            type(error), error, error.__traceback__, show_locals=True
        )
    )
    assert TOKEN not in console.export_text()


# ---------------------------------------------------------------- only the mock can send these


def _fake_client(fake: FakeLMStudio, **settings: float) -> LMStudioClient:
    return LMStudioClient.from_settings(
        base_url=fake.url,
        token_env=TOKEN_ENV,
        request_timeout=settings.get("request_timeout", 5.0),
        load_timeout=settings.get("load_timeout", 30.0),
        transport=fake.transport(),
    )


def _fail_with(fake: FakeLMStudio, operation: str) -> ServerError:
    async def scenario() -> ServerError:
        async with _fake_client(fake) as client:
            if operation == "list":
                return await failure(client.list_models())
            return await failure(client.load(QWEN))

    return run(scenario())


def test_non_json_answer_is_bad_response_with_a_truncated_snippet(fake: FakeLMStudio) -> None:
    fake.raw["/api/v1/models"] = httpx.Response(200, text="<html>" + "garbage " * 1000)
    error = _fail_with(fake, "list")
    assert isinstance(error, BadResponse)
    assert "not JSON" in str(error)
    assert '{"models": [...]}' in str(error)
    assert "<html>garbage" in str(error)
    assert "…" in str(error)
    assert len(str(error)) < 500


def test_truncated_json_is_bad_response(fake: FakeLMStudio) -> None:
    fake.raw["/api/v1/models/load"] = httpx.Response(200, text='{"instance_id": "qwen/qw')
    error = _fail_with(fake, "load")
    assert isinstance(error, BadResponse)
    assert "not JSON" in str(error)
    assert '{"instance_id": "qwen/qw' in str(error)


def test_empty_body_is_bad_response(fake: FakeLMStudio) -> None:
    fake.raw["/api/v1/models"] = httpx.Response(200, content=b"")
    error = _fail_with(fake, "list")
    assert isinstance(error, BadResponse)
    assert "(empty body)" in str(error)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"data": []}, "models: expected a list, got null"),
        ({"models": {"key": QWEN}}, "models: expected a list, got an object"),
        ([1, 2], "models: expected a list, got null"),
        ({"models": ["qwen"]}, "models[0]: expected an object, got a string"),
        (
            {"models": [{"key": QWEN}, {"type": "llm"}]},
            "models[1].key: expected a non-empty string",
        ),
        ({"models": [{"key": 7}]}, "models[0].key: expected a non-empty string, got a number"),
        (
            {"models": [{"key": QWEN, "loaded_instances": {}}]},
            "models[0].loaded_instances: expected",
        ),
        (
            {"models": [{"key": QWEN, "loaded_instances": [{"config": {}}]}]},
            "models[0].loaded_instances[0].id: expected a non-empty string, got null",
        ),
    ],
)
def test_wrong_shape_of_model_list_is_bad_response_naming_the_field(
    fake: FakeLMStudio, body: object, named: str
) -> None:
    fake.raw["/api/v1/models"] = httpx.Response(200, json=body)
    error = _fail_with(fake, "list")
    assert isinstance(error, BadResponse)
    assert named in str(error)
    assert "GET /api/v1/models" in str(error)


@pytest.mark.parametrize("body", [{"status": "loaded"}, {"instance_id": ""}, ["x"], "loaded"])
def test_load_answer_without_instance_id_is_bad_response(fake: FakeLMStudio, body: object) -> None:
    fake.raw["/api/v1/models/load"] = httpx.Response(200, json=body)
    error = _fail_with(fake, "load")
    assert isinstance(error, BadResponse)
    assert "instance_id" in str(error)


def test_parsing_tolerates_minor_variation_and_ignores_unknown_fields(fake: FakeLMStudio) -> None:
    models = [
        {"key": "a/min"},  # only the key
        {
            "key": "b/float-bits",
            "type": "llm",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.5},
            "params_string": None,
            "size_bytes": 1.0e9,
            "format": None,
            "loaded_instances": None,
            "something_new": {"nested": [1, 2]},
        },
        {"key": "c/odd", "quantization": "Q8_0", "size_bytes": "big", "max_context_length": True},
    ]
    fake.raw["/api/v1/models"] = httpx.Response(200, json={"models": models, "next": None})

    async def scenario() -> None:
        async with _fake_client(fake) as client:
            minimal, floaty, odd = await client.list_models()
        assert (minimal.key, minimal.type, minimal.quantization, minimal.loaded_instances) == (
            "a/min",
            "llm",
            None,
            (),
        )
        assert floaty.quantization is not None and floaty.quantization.bits_per_weight == 4.5
        assert floaty.params_string is None and floaty.size_bytes == 1_000_000_000
        assert odd.quantization is not None and odd.quantization.name == "Q8_0"
        assert odd.size_bytes is None and odd.max_context_length is None

    run(scenario())


def test_load_result_fields_are_parsed(fake: FakeLMStudio) -> None:
    answer = {
        "type": "llm",
        "instance_id": QWEN,
        "load_time_seconds": 9,
        "status": "loaded",
        "load_config": {"context_length": 8192, "flash_attention": True},
    }
    fake.raw["/api/v1/models/load"] = httpx.Response(200, json=answer)

    async def scenario() -> None:
        async with _fake_client(fake) as client:
            result = await client.load(QWEN)
        assert result.instance_id == QWEN
        assert result.load_time_seconds == 9.0
        assert result.status == "loaded"
        assert result.load_config == {"context_length": 8192, "flash_attention": True}

    run(scenario())


@pytest.mark.parametrize(
    ("response", "quoted"),
    [
        (httpx.Response(500, text="Internal Server Error"), "Internal Server Error"),
        (httpx.Response(502, text='{"detail": "bad gateway"}'), '{"detail": "bad gateway"}'),
        (httpx.Response(503, json={"error": {"message": "busy", "code": 1}}), "busy"),
        (httpx.Response(500, text="x" * 5000), "x" * 100),
    ],
)
def test_other_failures_are_refused_with_status_and_the_servers_words(
    fake: FakeLMStudio, response: httpx.Response, quoted: str
) -> None:
    fake.raw["/api/v1/models/load"] = response
    error = _fail_with(fake, "load")
    assert isinstance(error, ServerRefused)
    assert error.status_code == response.status_code
    assert f"HTTP {response.status_code}" in str(error)
    assert quoted in str(error)
    assert len(str(error)) < 500


def test_404_without_v0_is_refused_not_too_old(fake: FakeLMStudio) -> None:
    fake.raw["/api/v1/models"] = httpx.Response(404, text="Not Found")
    fake.raw["/api/v0/models"] = httpx.Response(404, text="Not Found")
    error = _fail_with(fake, "list")
    assert type(error) is ServerRefused
    assert error.status_code == 404
    assert "is server.url the address of an LM Studio server?" in str(error)


def test_v0_is_probed_only_after_a_404(fake: FakeLMStudio) -> None:
    fake.raw["/api/v1/models/load"] = httpx.Response(500, json={"error": "boom"})

    async def scenario() -> None:
        async with _fake_client(fake) as client:
            await client.list_models()
            await failure(client.load(QWEN))

    run(scenario())
    assert [r.url.path for r in fake.seen] == ["/api/v1/models", "/api/v1/models/load"]


def test_load_waits_load_timeout_and_other_requests_request_timeout(fake: FakeLMStudio) -> None:
    async def scenario() -> None:
        async with _fake_client(fake, request_timeout=7.0, load_timeout=900.0) as client:
            await client.list_models()
            result = await client.load(QWEN)
            await client.unload(result.instance_id)

    run(scenario())
    timeouts = {r.url.path: r.extensions["timeout"] for r in fake.seen}
    assert timeouts["/api/v1/models"]["read"] == 7.0
    assert timeouts["/api/v1/models/load"] == {
        "connect": 7.0,
        "read": 900.0,
        "write": 7.0,
        "pool": 7.0,
    }
    assert timeouts["/api/v1/models/unload"]["read"] == 7.0


def test_bearer_header_only_when_a_token_is_set(
    fake: FakeLMStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def list_once() -> None:
        async with _fake_client(fake) as client:
            await client.list_models()

    monkeypatch.setenv(TOKEN_ENV, "")  # set but empty: no token
    run(list_once())
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    run(list_once())
    without, with_token = fake.seen
    assert "authorization" not in without.headers
    assert with_token.headers["authorization"] == f"Bearer {TOKEN}"


def test_server_text_echoing_the_token_is_scrubbed(
    fake: FakeLMStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    fake.raw["/api/v1/models/load"] = httpx.Response(500, json={"error": f"bad call with {TOKEN}"})
    error = _fail_with(fake, "load")
    assert TOKEN not in str(error)
    assert "bad call with ***" in str(error)


def test_injected_http_client_stays_open_for_its_owner(fake: FakeLMStudio) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(transport=fake.transport()) as http:
            client = LMStudioClient(http, base_url=fake.url + "/", token=TOKEN)
            await client.aclose()
            assert not http.is_closed
            assert client.base_url == fake.url
            assert await client.list_models()
            assert TOKEN not in repr(client)

    run(scenario())
    assert fake.seen[0].headers["authorization"] == f"Bearer {TOKEN}"


# ---------------------------------------------------------------- real answers (lmstudio-real.md)


def test_v0_only_server_answering_a_bare_404_is_too_old_too(fake: FakeLMStudio) -> None:
    # One third-party report saw a 404 instead of the usual 200: the client is robust to both.
    fake.v0_only, fake.old_style = True, "404"
    for operation in ("list", "load"):
        error = _fail_with(fake, operation)
        assert isinstance(error, ServerTooOld), operation
        assert "LM Studio 0.4 or newer is needed" in str(error)


@pytest.mark.parametrize("status", [200, 404])
@pytest.mark.parametrize("operation", ["list", "load", "unload"])
def test_unexpected_endpoint_is_too_old_whatever_the_status(
    fake: FakeLMStudio, operation: str, status: int
) -> None:
    path = {"list": "/api/v1/models", "load": "/api/v1/models/load"}.get(
        operation, "/api/v1/models/unload"
    )
    body = {"error": f"Unexpected endpoint or method. (POST {path})"}
    for answered in ("/api/v1/models", path):
        fake.raw[answered] = httpx.Response(status, json=body)

    async def scenario() -> ServerError:
        async with _fake_client(fake) as client:
            if operation == "unload":
                return await failure(client.unload(QWEN))
            return await failure(client.list_models() if operation == "list" else client.load(QWEN))

    error = run(scenario())
    assert isinstance(error, ServerTooOld)
    assert "LM Studio 0.4 or newer is needed" in str(error)
    assert fake.url in str(error) and path in str(error)
    # Some 0.4.2 servers answer a token-less request so (lmstudio-real.md): say it too.
    assert f"set {TOKEN_ENV}" in str(error)
    assert all(r.url.path != "/api/v0/models" for r in fake.seen)


@pytest.mark.parametrize("status", [200, 401, 403, 400])
@pytest.mark.parametrize("refusal", ["missing", "malformed string", "malformed object"])
def test_auth_refusals_are_recognised_from_the_body_whatever_the_status(
    fake: FakeLMStudio, monkeypatch: pytest.MonkeyPatch, status: int, refusal: str
) -> None:
    message = "Malformed LM Studio API token provided. Expected sk-lm-..."
    body: dict[str, Any] = {
        "missing": MISSING_TOKEN_BODY,
        "malformed string": {"error": message},
        "malformed object": {"error": {"message": message, "type": "invalid_request"}},
    }[refusal]
    fake.raw["/api/v1/models"] = httpx.Response(status, json=body)
    if refusal != "missing":
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
    error = _fail_with(fake, "list")
    assert isinstance(error, AuthError)
    assert error.status_code == status
    assert TOKEN_ENV in str(error) and fake.url in str(error)
    advice = "set LM_API_TOKEN to the server's API token" if refusal == "missing" else "refused"
    assert advice in str(error)
    assert TOKEN not in str(error)


@pytest.mark.parametrize("status", [200, 201, 500])
def test_an_error_member_is_an_error_whatever_the_status(fake: FakeLMStudio, status: int) -> None:
    body = {"error": {"message": "Failed to load model: out of memory", "type": "x"}}
    fake.raw["/api/v1/models/load"] = httpx.Response(status, json=body)
    fake.raw["/api/v1/models"] = httpx.Response(status, json={"models": [], "error": "busy"})
    load_error = _fail_with(fake, "load")
    assert type(load_error) is ServerRefused
    assert "out of memory" in str(load_error) and load_error.status_code == status
    list_error = _fail_with(fake, "list")
    assert type(list_error) is ServerRefused and "busy" in str(list_error)


def test_a_null_error_member_is_not_an_error(fake: FakeLMStudio) -> None:
    answer = {"type": "llm", "instance_id": QWEN, "status": "loaded", "error": None}
    fake.raw["/api/v1/models/load"] = httpx.Response(200, json=answer)

    async def scenario() -> str:
        async with _fake_client(fake) as client:
            return (await client.load(QWEN)).instance_id

    assert run(scenario()) == QWEN


@pytest.mark.parametrize("status", [200, 400, 404])
def test_load_of_a_missing_model_is_model_not_found_from_the_body(
    fake: FakeLMStudio, status: int
) -> None:
    body = {"error": {"message": f"Model '{QWEN}' not found", "code": "model_not_found"}}
    fake.raw["/api/v1/models/load"] = httpx.Response(status, json=body)
    error = _fail_with(fake, "load")
    assert isinstance(error, ModelNotFound)
    assert QWEN in str(error) and error.status_code == status


def test_pre_0_4_0_load_answer_with_model_instance_id_is_accepted(fake: FakeLMStudio) -> None:
    answer = {"type": "llm", "model_instance_id": QWEN, "load_time_seconds": 2.5}
    fake.raw["/api/v1/models/load"] = httpx.Response(200, json={**answer, "status": "loaded"})

    async def scenario() -> LoadResult:
        async with _fake_client(fake) as client:
            return await client.load(QWEN)

    result = run(scenario())
    assert (result.instance_id, result.load_time_seconds) == (QWEN, 2.5)


def test_emulator_legacy_load_answer_is_accepted(emu: Emulator) -> None:
    emu.set_legacy_load_answer(True)

    async def scenario() -> str:
        async with EmulatorBackend(emu).client() as client:
            return (await client.load(QWEN)).instance_id

    assert run(scenario()) == QWEN
    assert emu.loaded() == {QWEN: [QWEN]}


def test_recorded_model_list_shapes_are_parsed(fake: FakeLMStudio) -> None:
    # Shapes from list.md and bug-tracker pastes: an LLM with null quantization and
    # params_string, a config without the optional keys, an embedding model without
    # architecture or capabilities, variants, descriptions.
    models = [
        {
            "type": "llm",
            "publisher": "lmstudio-community",
            "key": "mlx-community/qwen3-8b",
            "display_name": "Qwen3 8B",
            "architecture": "qwen3",
            "quantization": None,
            "size_bytes": 4_620_000_000,
            "params_string": None,
            "loaded_instances": [
                {"id": "mlx-community/qwen3-8b", "config": {"context_length": 4096}},
                {"id": "mlx-community/qwen3-8b:2", "config": {"context_length": 8192}},
            ],
            "max_context_length": 40960,
            "format": "mlx",
            "capabilities": {"vision": False, "trained_for_tool_use": True},
            "description": "Qwen3 8B",
            "variants": ["mlx-community/qwen3-8b@4bit"],
            "selected_variant": "mlx-community/qwen3-8b@4bit",
        },
        {
            "type": "embedding",
            "publisher": "nomic-ai",
            "key": EMBEDDER,
            "display_name": "Nomic Embed Text v1.5",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
            "size_bytes": 84_106_624,
            "params_string": None,
            "loaded_instances": [],
            "max_context_length": 2048,
            "format": "gguf",
        },
    ]
    fake.raw["/api/v1/models"] = httpx.Response(200, json={"models": models})

    async def scenario() -> list[ModelInfo]:
        async with _fake_client(fake) as client:
            return await client.list_models()

    mlx, embedder = run(scenario())
    assert mlx.quantization is None and mlx.params_string is None and mlx.format == "mlx"
    assert mlx.instance_ids == ("mlx-community/qwen3-8b", "mlx-community/qwen3-8b:2")
    assert mlx.loaded_instances[1].config == {"context_length": 8192}
    assert (embedder.type, embedder.architecture) == ("embedding", None)
    assert embedder.quantization is not None and embedder.quantization.bits_per_weight == 4.0


# ---------------------------------------------------------------- unload must be confirmed


def _unload_outcome(
    fake: FakeLMStudio, answer: httpx.Response, instance: str
) -> ServerError | None:
    fake.raw["/api/v1/models/unload"] = answer

    async def scenario() -> ServerError | None:
        async with _fake_client(fake) as client:
            try:
                await client.unload(instance)
            except ServerError as error:
                return error
            return None

    return run(scenario())


def test_unload_answered_with_the_instance_is_done_without_a_second_look(
    fake: FakeLMStudio,
) -> None:
    fake.instances[QWEN] = [(QWEN, {})]
    assert _unload_outcome(fake, httpx.Response(200, json={"instance_id": QWEN}), QWEN) is None
    assert [r.url.path for r in fake.seen] == ["/api/v1/models/unload"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"error": "No loaded model with instance id"}),
        httpx.Response(404, json={"error": {"message": "not found"}}),
        httpx.Response(200, json={}),
        httpx.Response(200, json={"instance_id": "someone/else"}),
        httpx.Response(500, text="oops"),
    ],
)
def test_unconfirmed_unload_looks_at_the_listing(
    fake: FakeLMStudio, answer: httpx.Response
) -> None:
    # Still listed: the unload did not happen, whatever the status said.
    fake.instances[QWEN] = [(QWEN, {})]
    still = _unload_outcome(fake, answer, QWEN)
    assert type(still) is ServerRefused, still
    assert "still lists it as loaded" in str(still) and QWEN in str(still)
    assert [r.url.path for r in fake.seen] == ["/api/v1/models/unload", "/api/v1/models"]
    # Gone: ModelNotFound, which the daemon takes as "already gone, done".
    fake.instances.clear()
    gone = _unload_outcome(fake, answer, QWEN)
    assert isinstance(gone, ModelNotFound) and QWEN in str(gone)


def test_unconfirmed_unload_with_the_listing_failing_reports_the_unloads_answer(
    fake: FakeLMStudio,
) -> None:
    fake.raw["/api/v1/models"] = httpx.Response(500, text="listing broke")
    error = _unload_outcome(fake, httpx.Response(200, json={"error": "cannot unload now"}), QWEN)
    assert type(error) is ServerRefused and "cannot unload now" in str(error)


# ---------------------------------------------------------------- body size caps


class Endless(httpx.AsyncByteStream):
    """A body that never ends, counting what was taken from it."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += len(self.chunk)
            yield self.chunk


@pytest.mark.parametrize(
    ("operation", "path", "cap"),
    [("list", "/api/v1/models", MODELS_CAP), ("load", "/api/v1/models/load", SMALL_CAP)],
)
def test_a_runaway_body_is_cut_at_the_cap(
    fake: FakeLMStudio, operation: str, path: str, cap: int
) -> None:
    endless = Endless(b'{"models": [' + b" " * 65_523)
    fake.raw[path] = httpx.Response(200, stream=endless)
    error = _fail_with(fake, operation)
    assert isinstance(error, BadResponse)
    assert f"more than the {cap // (1024 * 1024)} MiB" in str(error)
    assert fake.url in str(error) and path in str(error)
    assert cap < endless.sent <= cap + 2 * 65_536  # read no further than the cap


def test_a_declared_length_over_the_cap_is_refused_before_reading(fake: FakeLMStudio) -> None:
    endless = Endless(b"x" * 65_536)
    fake.raw["/api/v1/models/load"] = httpx.Response(
        200, headers={"Content-Length": str(SMALL_CAP + 1)}, stream=endless
    )
    error = _fail_with(fake, "load")
    assert isinstance(error, BadResponse)
    assert f"a body of {SMALL_CAP + 1} bytes" in str(error)
    assert endless.sent == 0


def test_a_model_list_under_the_cap_is_read_whole(fake: FakeLMStudio) -> None:
    many = [_model_entry(QWEN, []) | {"key": f"m/{i}"} for i in range(20_000)]
    fake.raw["/api/v1/models"] = httpx.Response(200, json={"models": many})  # about 8 MB

    async def scenario() -> int:
        async with _fake_client(fake) as client:
            return len(await client.list_models())

    assert run(scenario()) == 20_000


# ---------------------------------------------------------------- only the emulator can do these


def test_cancelled_load_leaks_nothing_and_the_client_stays_usable(emu: Emulator) -> None:
    emu.set_load_delay(60.0)
    loop_problems: list[dict[str, Any]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: loop_problems.append(context))
        client = LMStudioClient.from_settings(
            base_url=emu.url, token_env=TOKEN_ENV, request_timeout=5.0, load_timeout=120.0
        )
        load = asyncio.create_task(client.load(QWEN))
        await asyncio.to_thread(emu.wait_for_request, "/api/v1/models/load", method="POST")
        load.cancel()
        with pytest.raises(asyncio.CancelledError):
            await load
        assert QWEN in {m.key for m in await client.list_models()}
        await client.aclose()

    run(scenario())
    gc.collect()  # a leaked socket or transport warns when collected: an error under pytest
    assert loop_problems == []


def test_load_slower_than_load_timeout_is_reported_as_such(emu: Emulator) -> None:
    emu.set_load_delay(60.0)

    async def scenario() -> ServerError:
        async with LMStudioClient.from_settings(
            base_url=emu.url, token_env=TOKEN_ENV, request_timeout=5.0, load_timeout=0.2
        ) as client:
            return await failure(client.load(QWEN))

    error = run(scenario())
    # LoadTimedOut, a ServerUnreachable: the load may still land, and the daemon's journal
    # keeps it to collect (L22); a refused connection is plain ServerUnreachable.
    assert isinstance(error, LoadTimedOut)
    assert "within 0.2s (server.load_timeout)" in str(error)
    assert QWEN in str(error)


def test_ordinary_request_timeout_is_unreachable_saying_how_long(emu: Emulator) -> None:
    instance_id = emu.load_behind(QWEN)
    emu.hang_unloads(True)

    async def scenario() -> ServerError:
        async with LMStudioClient.from_settings(
            base_url=emu.url, token_env=TOKEN_ENV, request_timeout=0.2, load_timeout=30.0
        ) as client:
            return await failure(client.unload(instance_id))

    error = run(scenario())
    emu.hang_unloads(False)
    assert isinstance(error, ServerUnreachable)
    assert f"LM Studio is not reachable at {emu.url}" in str(error)
    assert "timed out after 0.2s" in str(error)


def test_structlog_lines_are_debug_only(emu: Emulator) -> None:
    async def scenario() -> None:
        async with LMStudioClient.from_settings(
            base_url=emu.url, token_env=TOKEN_ENV, request_timeout=5.0, load_timeout=30.0
        ) as client:
            await client.list_models()
            await failure(client.load("nobody/nothing"))

    with capture_logs() as logs:
        run(scenario())
    assert logs
    assert {entry["log_level"] for entry in logs} == {"debug"}
    assert {entry["event"] for entry in logs} == {"lmstudio_request"}
