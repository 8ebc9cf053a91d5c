"""LM Studio's load guardrail refusal (lmstudio-real.md, "Loads refused for lack of
resources") is LoadRefused, a ServerRefused carrying the server's message: from the
recorded texts behind MockTransport, and from the emulator's guardrail mode (L27)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from lmstudio_contract_support import (
    QWEN,
    TOKEN,
    TOKEN_ENV,
    FakeLMStudio,
    _fail_with,
    failure,
    run,
)

from lmkeeperd.emulator import Emulator
from lmkeeperd.emulator.catalog import default_catalog
from lmkeeperd.errors import LoadRefused, ModelNotFound, ServerError, ServerRefused
from lmkeeperd.lmstudio.client import LMStudioClient

# Every wording seen in the wild, word for word (lmstudio-real.md).
REFUSALS = {
    "0.3.27+": (
        "Model loading was stopped due to insufficient system resources. Under the current "
        "settings, this model requires approximately 273.25 GB of memory, and continuing to "
        "load it would likely overload your system and cause it to freeze. If you think this "
        "is incorrect, you can adjust the model loading guardrails in settings."
    ),
    "older": (
        "Model loading aborted due to insufficient system resources. Overloading the system "
        "will likely cause it to freeze. If you believe this is a mistake, you can try to "
        "change the model loading guardrails in the settings."
    ),
    "ui": "Not enough resources to load the model with the current settings",
}
SMALL = "qwen/qwen3-4b-2507"
EIGHT_B = "meta-llama/llama-3.1-8b-instruct"
SIZES = {model.key: model.size_bytes for model in default_catalog()}


def shaped(text: str, shape: str) -> dict[str, Any]:
    if shape == "string":
        return {"error": text}
    return {"error": {"message": text, "type": "server_error", "code": "model_load_failed"}}


@pytest.mark.parametrize("wording", sorted(REFUSALS))
@pytest.mark.parametrize("status", [500, 400, 200])
@pytest.mark.parametrize("shape", ["object", "string"])
def test_a_guardrail_refusal_is_load_refused_whatever_the_status(
    fake: FakeLMStudio, wording: str, status: int, shape: str
) -> None:
    text = REFUSALS[wording]
    fake.raw["/api/v1/models/load"] = httpx.Response(status, json=shaped(text, shape))
    error = _fail_with(fake, "load")
    assert isinstance(error, LoadRefused) and isinstance(error, ServerRefused)
    assert error.model == QWEN and error.status_code == status
    assert error.server_message == text  # whole, not cut to a snippet
    assert QWEN in str(error) and "lack of resources" in str(error)


def test_other_load_failures_stay_plain_server_refused(fake: FakeLMStudio) -> None:
    fake.raw["/api/v1/models/load"] = httpx.Response(500, json=shaped("out of memory", "object"))
    error = _fail_with(fake, "load")
    assert type(error) is ServerRefused


def test_the_refusal_text_outside_a_load_is_not_a_load_refusal(fake: FakeLMStudio) -> None:
    body = {"models": [], "error": REFUSALS["0.3.27+"]}
    fake.raw["/api/v1/models"] = httpx.Response(500, json=body)
    error = _fail_with(fake, "list")
    assert type(error) is ServerRefused


def test_the_token_never_shows_in_a_refusal(
    fake: FakeLMStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    text = REFUSALS["ui"] + f" (client {TOKEN})"
    fake.raw["/api/v1/models/load"] = httpx.Response(500, json=shaped(text, "object"))
    error = _fail_with(fake, "load")
    assert isinstance(error, LoadRefused)
    assert TOKEN not in str(error) and TOKEN not in error.server_message


# -- against the emulator's guardrail mode ----------------------------------------------


def client(emu: Emulator) -> LMStudioClient:
    return LMStudioClient.from_settings(
        base_url=emu.url, token_env=TOKEN_ENV, request_timeout=5.0, load_timeout=30.0
    )


async def load(emu: Emulator, key: str) -> str | ServerError:
    async with client(emu) as c:
        try:
            return (await c.load(key)).instance_id
        except ServerError as error:
            return error


def test_emulator_count_limit_refuses_with_lm_studios_text(emu: Emulator) -> None:
    emu.set_guardrail(max_models=1)
    assert run(load(emu, SMALL)) == SMALL
    refused = run(load(emu, EIGHT_B))
    assert isinstance(refused, LoadRefused) and refused.model == EIGHT_B
    gb = SIZES[EIGHT_B] / 1e9
    assert refused.server_message == REFUSALS["0.3.27+"].replace("273.25", f"{gb:.2f}")
    assert emu.loaded() == {SMALL: [SMALL]}


def test_emulator_memory_limit_counts_loaded_models_in_full(emu: Emulator) -> None:
    # Room for the two together, less one byte: the second is refused until the first goes.
    emu.set_guardrail(memory_gb=(SIZES[SMALL] + SIZES[EIGHT_B] - 1) / 1e9)
    assert run(load(emu, SMALL)) == SMALL
    assert isinstance(run(load(emu, EIGHT_B)), LoadRefused)

    async def unload_then_load() -> str:
        async with client(emu) as c:
            await c.unload(SMALL)
            return (await c.load(EIGHT_B)).instance_id

    assert run(unload_then_load()) == EIGHT_B
    emu.set_guardrail()  # off again
    assert run(load(emu, SMALL)) == SMALL


def test_emulator_guardrail_refuses_at_once_and_keeps_injected_failures(emu: Emulator) -> None:
    emu.set_load_delay(5.0)
    emu.fail_next_loads(1)
    emu.set_guardrail(memory_gb=SIZES[SMALL] / 1e9 / 2)  # SMALL alone does not fit

    async def timed() -> tuple[str | ServerError, float]:
        start = time.monotonic()
        outcome = await load(emu, SMALL)
        return outcome, time.monotonic() - start

    outcome, seconds = run(timed())
    assert isinstance(outcome, LoadRefused) and seconds < 4.0
    assert emu.state()["fail_next_loads"] == 1


def test_an_unknown_model_is_still_model_not_found_under_the_guardrail(emu: Emulator) -> None:
    emu.set_guardrail(max_models=1)
    emu.load_behind(SMALL)

    async def unknown() -> ServerError:
        async with client(emu) as c:
            return await failure(c.load("no/such-model"))

    assert isinstance(run(unknown()), ModelNotFound)
