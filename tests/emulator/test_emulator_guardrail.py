"""The emulator's load guardrail: several models loaded with their catalog sizes, and
loads past a memory or count limit refused with LM Studio's text (lmstudio-real.md)."""

from __future__ import annotations

import httpx
import pytest
from emulator_support import CHAT, EIGHT_B, EMBEDDER, LOAD, SMALL, chat_body, error_message

from lmkeeperd.emulator import Emulator
from lmkeeperd.emulator.catalog import default_catalog

SIZES = {model.key: model.size_bytes for model in default_catalog()}
REFUSAL_START = "Model loading was stopped due to insufficient system resources."


def test_several_models_load_side_by_side_with_their_sizes(
    emu: Emulator, client: httpx.Client
) -> None:
    for key in (SMALL, EIGHT_B, EMBEDDER):
        assert client.post(LOAD, json={"model": key}).status_code == 200
    listed = {m["key"]: m for m in client.get("/api/v1/models").json()["models"]}
    for key in (SMALL, EIGHT_B, EMBEDDER):
        assert listed[key]["size_bytes"] == SIZES[key]
        assert [i["id"] for i in listed[key]["loaded_instances"]] == [key]


def test_count_limit_refuses_the_load_past_it(emu: Emulator, client: httpx.Client) -> None:
    emu.set_guardrail(max_models=2)
    assert client.post(LOAD, json={"model": SMALL}).status_code == 200
    assert client.post(LOAD, json={"model": EMBEDDER}).status_code == 200
    refused = client.post(LOAD, json={"model": EIGHT_B})
    assert refused.status_code == 500
    message = error_message(refused)
    assert message.startswith(REFUSAL_START)
    assert f"approximately {SIZES[EIGHT_B] / 1e9:.2f} GB of memory" in message
    assert message.endswith("you can adjust the model loading guardrails in settings.")
    assert emu.loaded() == {SMALL: [SMALL], EMBEDDER: [EMBEDDER]}


def test_memory_limit_sums_every_loaded_instance(emu: Emulator, client: httpx.Client) -> None:
    # Two instances of SMALL plus EIGHT_B, exactly: fits; one byte less would not.
    limit = 2 * SIZES[SMALL] + SIZES[EIGHT_B]
    emu.set_guardrail(memory_gb=limit / 1e9)
    for key in (SMALL, SMALL, EIGHT_B):
        assert client.post(LOAD, json={"model": key}).status_code == 200
    assert error_message(client.post(LOAD, json={"model": EMBEDDER})).startswith(REFUSAL_START)
    emu.unload_behind(SMALL + ":2")
    assert client.post(LOAD, json={"model": EMBEDDER}).status_code == 200


def test_a_jit_load_is_refused_too_after_its_auto_evict(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_jit(True)
    emu.set_guardrail(max_models=1)
    assert client.post(CHAT, json=chat_body(SMALL)).status_code == 200
    # Auto-evict unloads the previous JIT model first: this one fits.
    assert client.post(CHAT, json=chat_body(EIGHT_B)).status_code == 200
    assert emu.loaded() == {EIGHT_B: [EIGHT_B]}
    emu.load_behind(EMBEDDER)  # the GUI is not checked; it is a manual load, never evicted
    refused = client.post(CHAT, json=chat_body(SMALL))
    assert error_message(refused).startswith(REFUSAL_START)


def test_guardrail_over_http_control(emu: Emulator, client: httpx.Client) -> None:
    assert client.post("/_emulator/guardrail", json={"memory_gb": 5, "max_models": 3}).json() == {
        "ok": True
    }
    state = client.get("/_emulator/state").json()
    assert (state["guardrail_memory_gb"], state["guardrail_max_models"]) == (5.0, 3)
    assert client.post("/_emulator/guardrail", json={}).status_code == 200
    state = client.get("/_emulator/state").json()
    assert (state["guardrail_memory_gb"], state["guardrail_max_models"]) == (None, None)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"memory_gb": -1}, "'memory_gb' must be a number >= 0"),
        ({"memory_gb": 0}, "memory_gb must be a number > 0"),
        ({"max_models": 0}, "max_models must be an integer >= 1"),
        ({"max_models": 1.5}, "'max_models' must be an integer"),
        ({"memory": 4}, "unknown key(s) ['memory']"),
    ],
)
def test_bad_guardrail_settings_are_refused_with_the_problem_named(
    client: httpx.Client, body: dict[str, object], problem: str
) -> None:
    answer = client.post("/_emulator/guardrail", json=body)
    assert answer.status_code == 400
    assert problem in answer.json()["error"]
