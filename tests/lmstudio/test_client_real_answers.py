"""LMStudioClient against the answers real LM Studio gives (lmstudio-real.md), unloads that
must be confirmed, body size caps, and what only the emulator can do."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from lmstudio_contract_support import (
    EMBEDDER,
    MISSING_TOKEN_BODY,
    QWEN,
    TOKEN,
    TOKEN_ENV,
    EmulatorBackend,
    FakeLMStudio,
    _fail_with,
    _fake_client,
    _model_entry,
    failure,
    run,
)
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
