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

import io
import traceback
from collections.abc import Awaitable, Callable

import pytest
from lmstudio_contract_support import (
    QWEN,
    TOKEN,
    TOKEN_ENV,
    Backend,
    failure,
    run,
)
from structlog.testing import capture_logs

from lmkeeperd.errors import (
    AuthError,
    ModelNotFound,
    ServerError,
    ServerRefused,
    ServerTooOld,
    ServerUnreachable,
)
from lmkeeperd.lmstudio.client import LMStudioClient

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
