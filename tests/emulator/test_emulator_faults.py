"""The emulator's faults (delays, failures, hung unloads), auth, v0 mode, going down and back.

Waits are on conditions with deadlines (`emu.wait_until`, `wait_for_request`,
thread joins with timeouts); no test sleeps to synchronise or asserts a
duration beyond a generous lower bound.
"""

from __future__ import annotations

import httpx
import pytest
from emulator_support import (
    CHAT,
    EIGHT_B,
    EMBEDDER,
    LOAD,
    SMALL,
    UNLOAD,
    VISION,
    Background,
    chat_body,
    error_message,
    make_client,
    models_by_key,
)

from lmkeeperd.emulator import (
    Emulator,
    default_catalog,
)

# -- faults: delays, failures, hung unloads ----------------------------------------------


def test_load_delay_is_applied(emu: Emulator, client: httpx.Client) -> None:
    emu.set_load_delay(0.2)
    answer = client.post(LOAD, json={"model": SMALL}).json()
    assert answer["load_time_seconds"] >= 0.2
    (record,) = emu.requests()
    assert record.t_done is not None
    assert record.t_done - record.t >= 0.2


def test_a_loading_model_is_not_listed_and_others_proceed(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_load_delay(60, model=EIGHT_B)
    slow = Background(emu, "POST", LOAD, {"model": EIGHT_B})
    in_flight = emu.wait_for_request(LOAD)
    assert in_flight.status == 0
    assert in_flight.t_done is None
    # Another model loads without waiting, and the slow one is not listed yet.
    assert client.post(LOAD, json={"model": SMALL}).status_code == 200
    assert models_by_key(client)[EIGHT_B]["loaded_instances"] == []
    # The delay is read live: lowering it lets the waiting load finish now.
    emu.set_load_delay(0, model=EIGHT_B)
    outcome = slow.join()
    assert isinstance(outcome, httpx.Response)
    assert outcome.status_code == 200
    assert outcome.json()["instance_id"] == EIGHT_B
    assert emu.loaded() == {SMALL: [SMALL], EIGHT_B: [EIGHT_B]}


def test_fail_next_loads_counts_down(emu: Emulator, client: httpx.Client) -> None:
    emu.fail_next_loads(2, "not enough memory", status=507)
    for _ in range(2):
        response = client.post(LOAD, json={"model": SMALL})
        assert response.status_code == 507
        assert error_message(response) == "not enough memory"
        assert emu.loaded() == {}
    assert emu.state()["fail_next_loads"] == 0
    assert client.post(LOAD, json={"model": SMALL}).status_code == 200


def test_a_refused_load_does_not_use_up_an_injected_failure(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.fail_next_loads(1)
    assert client.post(LOAD, json={"model": "nobody/nothing"}).status_code == 404
    assert client.post(LOAD, json={}).status_code == 400
    assert client.post(LOAD, json={"model": SMALL}).status_code == 500


def test_hung_unload_is_released_when_hanging_is_turned_off(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.load_behind(SMALL)
    emu.hang_unloads(True)
    unload = Background(emu, "POST", UNLOAD, {"instance_id": SMALL})
    emu.wait_for_request(UNLOAD)
    assert emu.loaded() == {SMALL: [SMALL]}
    assert client.get("/api/v1/models").status_code == 200
    emu.hang_unloads(False)
    outcome = unload.join()
    assert isinstance(outcome, httpx.Response)
    assert outcome.status_code == 200
    assert emu.loaded() == {}


def test_hung_unload_is_released_by_stop() -> None:
    emulator = Emulator()
    emulator.start()
    try:
        emulator.load_behind(SMALL)
        emulator.hang_unloads(True)
        unload = Background(emulator, "POST", UNLOAD, {"instance_id": SMALL})
        emulator.wait_for_request(UNLOAD)
    finally:
        emulator.stop()
    assert isinstance(unload.join(), httpx.TransportError)


def test_load_and_unload_behind_the_clients_back(emu: Emulator, client: httpx.Client) -> None:
    emu.set_load_delay(60)
    emu.fail_next_loads(5)
    first = emu.load_behind(SMALL, {"context_length": 16384})
    second = emu.load_behind(SMALL)
    assert (first, second) == (SMALL, f"{SMALL}:2")
    instances = models_by_key(client)[SMALL]["loaded_instances"]
    assert [i["id"] for i in instances] == [first, second]
    assert instances[0]["config"]["context_length"] == 16384
    emu.unload_behind(first)
    assert emu.loaded() == {SMALL: [second]}
    with pytest.raises(LookupError):
        emu.load_behind("nobody/nothing")
    with pytest.raises(LookupError):
        emu.unload_behind(first)
    with pytest.raises(ValueError, match="context_length"):
        emu.load_behind(SMALL, {"context_length": "long"})


# -- auth --------------------------------------------------------------------------------


def test_token_gates_every_request_but_control(emu: Emulator, client: httpx.Client) -> None:
    token = "s3cret-t0ken"
    emu.set_token(token)
    missing = client.get("/api/v1/models")
    # LM Studio's bodies (lmstudio-real.md); the status is unknown: 401, as clients assume.
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    error = missing.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request", "invalid_api_key")
    assert error["message"].startswith("An LM Studio API token is required")
    wrong = client.post(LOAD, json={"model": SMALL}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert error_message(wrong).startswith("Malformed LM Studio API token provided")
    assert emu.loaded() == {}
    basic = client.get("/v1/models", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401
    right = client.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert right.status_code == 200
    control = client.get("/_emulator/state")
    assert control.status_code == 200
    assert control.json()["token_set"] is True
    assert [r.authorized for r in emu.requests()] == [False, False, False, True]
    assert [r.status for r in emu.requests()] == [401, 401, 401, 200]
    for text in (repr(emu), str(emu.state()), control.text, missing.text, wrong.text):
        assert token not in text
    emu.set_token(None)
    assert client.get("/api/v1/models").status_code == 200


# -- v0 ----------------------------------------------------------------------------------


def test_v0_models_lists_types_and_states(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL, {"context_length": 8192})
    response = client.get("/api/v0/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    entries = {e["id"]: e for e in body["data"]}
    assert len(entries) == len(default_catalog())
    assert entries[SMALL]["type"] == "llm"
    assert entries[SMALL]["state"] == "loaded"
    assert entries[SMALL]["loaded_context_length"] == 8192
    assert entries[SMALL]["quantization"] == "Q4_K_M"
    assert entries[SMALL]["max_context_length"] == 262_144
    assert entries[VISION]["type"] == "vlm"
    assert entries[VISION]["state"] == "not-loaded"
    assert entries[EMBEDDER]["type"] == "embeddings"
    single = client.get(f"/api/v0/models/{SMALL}")
    assert single.json() == entries[SMALL]
    assert client.get("/api/v0/models/nobody/nothing").status_code == 404


def test_0_3_mode_has_no_v1_api_but_v0_and_openai(emu: Emulator, client: httpx.Client) -> None:
    emu.set_v0_only(True)
    emu.load_behind(SMALL)
    for method, path, body in [
        ("GET", "/api/v1/models", None),
        ("POST", LOAD, {"model": EIGHT_B}),
        ("POST", UNLOAD, {"instance_id": SMALL}),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 200  # as 0.3.x does: the error is in the body
        assert response.json() == {"error": f"Unexpected endpoint or method. ({method} {path})"}
    assert client.get("/api/v0/models").status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] == SMALL
    assert client.post(CHAT, json=chat_body(SMALL)).status_code == 200
    assert emu.loaded() == {SMALL: [SMALL]}
    emu.set_v0_only(False)
    assert client.get("/api/v1/models").status_code == 200


# -- down and back -----------------------------------------------------------------------


def test_go_down_refuses_connections_and_come_back_forgets(
    emu: Emulator, client: httpx.Client
) -> None:
    port = emu.port
    emu.load_behind(SMALL)
    assert client.get("/api/v1/models").status_code == 200  # leaves a pooled connection
    emu.go_down()
    assert emu.phase == "down"
    with make_client(emu) as fresh, pytest.raises(httpx.ConnectError):
        fresh.get("/api/v1/models")
    with pytest.raises(httpx.TransportError):
        client.get("/api/v1/models")
    emu.come_back()
    assert emu.port == port
    assert models_by_key(client)[SMALL]["loaded_instances"] == []
    assert emu.loaded() == {}


def test_come_back_without_forgetting_keeps_models(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL)
    emu.go_down()
    emu.come_back(forget=False)
    assert emu.loaded() == {SMALL: [SMALL]}
    assert client.get("/api/v1/models").status_code == 200


def test_a_load_in_flight_when_the_server_goes_down_never_lands(emu: Emulator) -> None:
    emu.set_load_delay(60)
    load = Background(emu, "POST", LOAD, {"model": SMALL})
    emu.wait_for_request(LOAD)
    emu.go_down()
    assert isinstance(load.join(), httpx.TransportError)
    emu.come_back(forget=False)
    assert emu.loaded() == {}


def test_go_down_over_http_needs_a_duration(emu: Emulator, client: httpx.Client) -> None:
    response = client.post("/_emulator/go_down", json={})
    assert response.status_code == 400
    assert emu.phase == "up"
    emu.load_behind(SMALL)
    response = client.post("/_emulator/go_down", json={"seconds": 600, "forget": False})
    assert response.status_code == 200
    assert emu.phase == "down"
    with make_client(emu) as fresh, pytest.raises(httpx.ConnectError):
        fresh.get("/api/v1/models")
    emu.come_back(forget=False)
    assert emu.loaded() == {SMALL: [SMALL]}


def test_restart_over_http_comes_back_on_the_same_port(emu: Emulator, client: httpx.Client) -> None:
    port = emu.port
    emu.load_behind(SMALL)
    emu.go_down()
    emu.come_back(forget=False)
    assert client.post("/_emulator/restart", json={"forget": True}).status_code == 200
    emu.wait_until(lambda: emu.phase == "up")
    assert emu.port == port
    assert models_by_key(client)[SMALL]["loaded_instances"] == []
