"""The LM Studio emulator, over real HTTP on loopback.

Waits are on conditions with deadlines (`emu.wait_until`, `wait_for_request`,
thread joins with timeouts); no test sleeps to synchronise or asserts a
duration beyond a generous lower bound.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmkeeperd.emulator import (
    CatalogModel,
    Emulator,
    RequestRecord,
    catalog_to_json,
    default_catalog,
    load_catalog,
    parse_catalog,
)

SMALL = "qwen/qwen3-4b-2507"
EIGHT_B = "meta-llama/llama-3.1-8b-instruct"
VISION = "google/gemma-3-12b"
EMBEDDER = "text-embedding-nomic-embed-text-v1.5"
LOAD = "/api/v1/models/load"
UNLOAD = "/api/v1/models/unload"
CHAT = "/v1/chat/completions"
JOIN_SECONDS = 10.0


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(stream_interval=0.001, stream_chunks=5) as emulator:
        yield emulator


def make_client(url: str | Emulator, **options: Any) -> httpx.Client:
    # Plain HTTP on loopback: verify=False only skips building a TLS context (~50 ms each).
    base_url = url.url if isinstance(url, Emulator) else url
    options = {"timeout": 10.0, **options}
    return httpx.Client(base_url=base_url, trust_env=False, verify=False, **options)


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with make_client(emu) as c:
        yield c


def models_by_key(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/models")
    assert response.status_code == 200
    return {m["key"]: m for m in response.json()["models"]}


def error_message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


def chat_body(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


class Background:
    """Runs one HTTP call on a thread; keeps its response or transport error."""

    def __init__(self, emulator: Emulator, method: str, path: str, body: Any = None) -> None:
        self.outcome: httpx.Response | httpx.TransportError | None = None
        self._thread = threading.Thread(
            target=self._run, args=(emulator.url, method, path, body), daemon=True
        )
        self._thread.start()

    def _run(self, url: str, method: str, path: str, body: Any) -> None:
        with make_client(url, timeout=30.0) as c:
            try:
                self.outcome = c.request(method, path, json=body)
            except httpx.TransportError as exc:
                self.outcome = exc

    def join(self) -> httpx.Response | httpx.TransportError | None:
        self._thread.join(JOIN_SECONDS)
        assert not self._thread.is_alive(), "the request thread did not finish"
        return self.outcome


# -- catalog -----------------------------------------------------------------------------


def test_default_catalog_spans_sizes_types_and_formats() -> None:
    catalog = default_catalog()
    assert 7 <= len(catalog) <= 10
    assert len({m.key for m in catalog}) == len(catalog)
    assert {m.type for m in catalog} == {"llm", "embedding"}
    assert {m.format for m in catalog} == {"gguf", "mlx"}
    sizes = [m.size_bytes for m in catalog]
    assert min(sizes) < 300_000_000
    assert max(sizes) > 300_000_000_000
    assert any(m.vision for m in catalog)
    assert SMALL in {m.key for m in catalog}


def test_catalog_file_round_trips_and_serves(tmp_path: Path) -> None:
    models = (*default_catalog()[:2], CatalogModel(key="x/tiny", size_bytes=1, gguf_path="/t.gguf"))
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog_to_json(models)))
    assert load_catalog(path) == models
    path.write_text(json.dumps({"models": catalog_to_json(models)}))
    assert load_catalog(path) == models
    with Emulator.from_catalog_file(path) as emulator, make_client(emulator) as c:
        assert list(models_by_key(c)) == [m.key for m in models]


def test_catalog_accepts_a_real_server_answer_with_loaded_instances() -> None:
    entry = {
        "key": "qwen/qwen3-4b-2507",
        "size_bytes": 2497280256,
        "loaded_instances": [{"id": "qwen/qwen3-4b-2507", "config": {}}],
        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
        "capabilities": {"vision": False, "trained_for_tool_use": True},
    }
    (model,) = parse_catalog({"models": [entry]})
    assert model.publisher == "qwen"
    assert model.quantization == "Q4_K_M"
    assert model.trained_for_tool_use is True


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"nope": 1}, "a catalog is a JSON list"),
        ([{"size_bytes": 1}], "'key' is required"),
        ([{"key": "a"}], "'size_bytes' is required"),
        ([{"key": "a", "size_bytes": -1}], "size_bytes"),
        ([{"key": "a", "size_bytes": 1, "type": "vlm"}], "type must be one of"),
        ([{"key": "a", "size_bytes": 1}, {"key": "a", "size_bytes": 2}], "appears twice"),
        ([{"key": "a", "size_bytes": 1, "format": "onnx"}], "format must be one of"),
    ],
)
def test_bad_catalog_is_refused_with_the_problem_named(data: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_catalog(data)


def test_unreadable_catalog_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_catalog(path)


# -- life --------------------------------------------------------------------------------


def test_lifecycle_start_stop_is_idempotent_and_final() -> None:
    emulator = Emulator()
    with pytest.raises(RuntimeError):
        _ = emulator.url
    with emulator:
        assert emulator.url == f"http://127.0.0.1:{emulator.port}"
        assert emulator.phase == "up"
        with pytest.raises(RuntimeError):
            emulator.start()
    assert emulator.phase == "stopped"
    emulator.stop()
    with pytest.raises(RuntimeError):
        emulator.go_down()
    with pytest.raises(RuntimeError):
        emulator.start()


# -- GET /api/v1/models ------------------------------------------------------------------


def test_list_models_reports_every_documented_field(emu: Emulator, client: httpx.Client) -> None:
    response = client.get("/api/v1/models")
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["content-length"]) == len(response.content)
    listed = response.json()["models"]
    catalog = default_catalog()
    assert [m["key"] for m in listed] == [m.key for m in catalog]
    llm_fields = {
        "type", "publisher", "key", "display_name", "architecture", "quantization",
        "size_bytes", "params_string", "loaded_instances", "max_context_length",
        "format", "capabilities",
    }  # fmt: skip
    for entry, model in zip(listed, catalog, strict=True):
        expected_fields = llm_fields - {"architecture"} if model.type == "embedding" else llm_fields
        assert set(entry) == expected_fields, model.key
        assert entry["type"] == model.type
        assert entry["publisher"] == model.publisher
        assert entry["display_name"] == model.display_name
        assert entry["quantization"] == {
            "name": model.quantization,
            "bits_per_weight": model.bits_per_weight,
        }
        assert entry["size_bytes"] == model.size_bytes
        assert entry["params_string"] == model.params_string
        assert entry["loaded_instances"] == []
        assert entry["max_context_length"] == model.max_context_length
        assert entry["format"] == model.format
        assert entry["capabilities"] == {
            "vision": model.vision,
            "trained_for_tool_use": model.trained_for_tool_use,
        }
        if model.type == "llm":
            assert entry["architecture"] == model.architecture
    embedder = next(m for m in listed if m["key"] == EMBEDDER)
    assert embedder["type"] == "embedding"
    assert embedder["params_string"] is None


def test_connections_are_kept_alive_even_after_a_stream(emu: Emulator) -> None:
    emu.load_behind(SMALL)
    connection = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    try:
        connection.request("GET", "/api/v1/models")
        connection.getresponse().read()
        first_socket = connection.sock
        assert first_socket is not None
        connection.request("POST", CHAT, body=json.dumps(chat_body(SMALL, stream=True)))
        streamed = connection.getresponse()
        assert streamed.getheader("Transfer-Encoding") == "chunked"
        assert streamed.read().endswith(b"data: [DONE]\n\n")
        connection.request("GET", "/api/v1/models")
        assert connection.getresponse().read()
        assert connection.sock is first_socket
    finally:
        connection.close()


# -- load and unload ---------------------------------------------------------------------


def test_load_answers_and_the_instance_appears(emu: Emulator, client: httpx.Client) -> None:
    response = client.post(LOAD, json={"model": SMALL})
    assert response.status_code == 200
    answer = response.json()
    assert answer["type"] == "llm"
    assert answer["instance_id"] == SMALL
    assert answer["status"] == "loaded"
    assert isinstance(answer["load_time_seconds"], float)
    assert "load_config" not in answer
    (instance,) = models_by_key(client)[SMALL]["loaded_instances"]
    assert instance["id"] == SMALL
    assert set(instance["config"]) == {
        "context_length", "eval_batch_size", "parallel", "flash_attention",
        "offload_kv_cache_to_gpu",
    }  # fmt: skip
    assert emu.loaded() == {SMALL: [SMALL]}


def test_load_echoes_the_config_when_asked(client: httpx.Client) -> None:
    body = {
        "model": SMALL,
        "context_length": 8192,
        "eval_batch_size": 256,
        "flash_attention": False,
        "offload_kv_cache_to_gpu": False,
        "num_experts": 4,
        "echo_load_config": True,
    }
    answer = client.post(LOAD, json=body).json()
    assert answer["load_config"] == {
        "context_length": 8192,
        "eval_batch_size": 256,
        "parallel": 4,
        "flash_attention": False,
        "offload_kv_cache_to_gpu": False,
        "num_experts": 4,
    }
    config = models_by_key(client)[SMALL]["loaded_instances"][0]["config"]
    assert config["context_length"] == 8192
    assert config["flash_attention"] is False


def test_context_length_above_the_maximum_is_clamped(client: httpx.Client) -> None:
    body = {"model": EMBEDDER, "context_length": 100_000, "echo_load_config": True}
    answer = client.post(LOAD, json=body).json()
    assert answer["type"] == "embedding"
    assert answer["load_config"]["context_length"] == 2048


def test_loading_a_loaded_model_creates_another_instance(
    emu: Emulator, client: httpx.Client
) -> None:
    first = client.post(LOAD, json={"model": SMALL}).json()["instance_id"]
    second = client.post(LOAD, json={"model": SMALL}).json()["instance_id"]
    assert first == SMALL
    assert second != first
    assert second == f"{SMALL}:2"
    ids = [i["id"] for i in models_by_key(client)[SMALL]["loaded_instances"]]
    assert ids == [first, second]


def test_unload_by_instance_id(emu: Emulator, client: httpx.Client) -> None:
    client.post(LOAD, json={"model": SMALL})
    client.post(LOAD, json={"model": SMALL})
    response = client.post(UNLOAD, json={"instance_id": f"{SMALL}:2"})
    assert response.status_code == 200
    assert response.json() == {"instance_id": f"{SMALL}:2"}
    assert emu.loaded() == {SMALL: [SMALL]}
    assert client.post(UNLOAD, json={"instance_id": SMALL}).status_code == 200
    assert models_by_key(client)[SMALL]["loaded_instances"] == []


def test_unknown_model_and_instance_answer_404(emu: Emulator, client: httpx.Client) -> None:
    response = client.post(LOAD, json={"model": "nobody/nothing-7b"})
    assert response.status_code == 404
    assert "nobody/nothing-7b" in error_message(response)
    response = client.post(UNLOAD, json={"instance_id": "ghost"})
    assert response.status_code == 404
    assert "ghost" in error_message(response)
    assert emu.loaded() == {}


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (LOAD, b"{not json"),
        (LOAD, b""),
        (LOAD, b"[]"),
        (LOAD, b"{}"),
        (LOAD, b'{"model": 5}'),
        (LOAD, b'{"model": ""}'),
        (LOAD, json.dumps({"model": SMALL, "context_length": "big"}).encode()),
        (LOAD, json.dumps({"model": SMALL, "context_length": 0}).encode()),
        (LOAD, json.dumps({"model": SMALL, "eval_batch_size": True}).encode()),
        (LOAD, json.dumps({"model": SMALL, "flash_attention": "yes"}).encode()),
        (LOAD, json.dumps({"model": SMALL, "offload_kv_cache_to_gpu": 1}).encode()),
        (LOAD, json.dumps({"model": SMALL, "num_experts": 1.5}).encode()),
        (LOAD, json.dumps({"model": SMALL, "echo_load_config": 1}).encode()),
        (UNLOAD, b"{}"),
        (UNLOAD, b'{"instance_id": 3}'),
        (UNLOAD, b"nope"),
    ],
)
def test_bad_bodies_answer_400(
    emu: Emulator, client: httpx.Client, path: str, content: bytes
) -> None:
    response = client.post(path, content=content)
    assert response.status_code == 400
    assert error_message(response)
    assert emu.loaded() == {}


def test_a_chunked_request_body_is_read(emu: Emulator, client: httpx.Client) -> None:
    parts = iter([b'{"model": ', json.dumps(SMALL).encode(), b"}"])
    response = client.post(LOAD, content=parts)
    assert response.status_code == 200
    assert emu.requests()[-1].body == {"model": SMALL}


@pytest.mark.parametrize("style", ["object", "string"])
def test_error_bodies_come_in_both_shapes(emu: Emulator, client: httpx.Client, style: str) -> None:
    emu.set_error_style(style)
    body = client.post(LOAD, json={"model": "nobody/nothing"}).json()
    if style == "string":
        assert body == {"error": "model 'nobody/nothing' not found"}
    else:
        assert body["error"]["message"] == "model 'nobody/nothing' not found"
        assert body["error"]["code"] == "model_not_found"


def test_unknown_endpoints_answer_200_with_lm_studios_error_text(
    emu: Emulator, client: httpx.Client
) -> None:
    # Real LM Studio answers an unknown endpoint or method with HTTP 200 (lmstudio-real.md).
    for style in ("object", "string"):
        emu.set_error_style(style)
        for method, path in [("GET", "/api/v1/nothing"), ("PUT", LOAD), ("GET", LOAD)]:
            response = client.request(method, path)
            assert response.status_code == 200
            assert response.json() == {"error": f"Unexpected endpoint or method. ({method} {path})"}


def test_load_refuses_unrecognized_keys_as_0_4_23_does(emu: Emulator, client: httpx.Client) -> None:
    response = client.post(LOAD, json={"model": SMALL, "ttl": 60, "parallel": 2})
    assert response.status_code == 400
    assert error_message(response) == "Unrecognized key(s) in object: 'ttl', 'parallel'"
    assert emu.loaded() == {}
    accepted = {
        "model": SMALL,
        "context_length": 8192,
        "eval_batch_size": 256,
        "flash_attention": False,
        "num_experts": 4,
        "offload_kv_cache_to_gpu": False,
        "echo_load_config": True,
    }
    assert client.post(LOAD, json=accepted).status_code == 200


def test_legacy_load_answer_names_model_instance_id(emu: Emulator, client: httpx.Client) -> None:
    emu.set_legacy_load_answer(True)
    answer = client.post(LOAD, json={"model": SMALL}).json()
    assert answer == {
        "type": "llm",
        "model_instance_id": SMALL,
        "load_time_seconds": answer["load_time_seconds"],
        "status": "loaded",
    }
    emu.set_legacy_load_answer(False)
    assert client.post(LOAD, json={"model": SMALL}).json()["instance_id"] == f"{SMALL}:2"


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


# -- OpenAI-compatible endpoints and JIT -------------------------------------------------


def test_chat_on_an_unloaded_model_fails_without_jit(emu: Emulator, client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat_body(SMALL))
    assert response.status_code == 404
    assert "not loaded" in error_message(response)
    assert emu.loaded() == {}
    assert client.post(CHAT, json=chat_body("nobody/nothing")).status_code == 404


def test_chat_completion_on_a_loaded_model(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL)
    emu.load_behind(SMALL)
    for name in (SMALL, f"{SMALL}:2"):
        response = client.post(CHAT, json=chat_body(name))
        assert response.status_code == 200
        answer = response.json()
        assert answer["object"] == "chat.completion"
        assert answer["model"] == name
        (choice,) = answer["choices"]
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"]
        assert choice["finish_reason"] == "stop"
        assert answer["usage"]["completion_tokens"] == 5


def test_jit_loads_honours_the_delay_and_evicts_the_previous_jit_model(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_jit(True)
    manual = emu.load_behind(VISION)
    emu.set_load_delay(0.1)
    assert client.post(CHAT, json=chat_body(SMALL)).status_code == 200
    record = emu.requests()[-1]
    assert record.t_done is not None
    assert record.t_done - record.t >= 0.1
    assert emu.loaded() == {VISION: [manual], SMALL: [SMALL]}
    assert client.post(CHAT, json=chat_body(EIGHT_B)).status_code == 200
    assert emu.loaded() == {VISION: [manual], EIGHT_B: [EIGHT_B]}
    emu.set_auto_evict(False)
    assert client.post(CHAT, json=chat_body(SMALL)).status_code == 200
    assert emu.loaded() == {VISION: [manual], EIGHT_B: [EIGHT_B], SMALL: [SMALL]}


def test_jit_ttl_defaults_to_an_hour_and_expires_an_idle_jit_model(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_jit(True)
    manual = emu.load_behind(VISION)
    assert client.post(CHAT, json=chat_body(SMALL)).status_code == 200
    # The answer reaches us before the server's thread lets go of the instance (the idle
    # timer restarts there): wait for that, or the clock below would race it.
    emu.wait_until(lambda: emu.instance_info()[SMALL]["in_use"] == 0)
    info = emu.instance_info()
    assert (info[SMALL]["jit"], info[SMALL]["ttl"]) == (True, 3600.0)
    assert (info[manual]["jit"], info[manual]["ttl"]) == (False, None)
    emu.advance_clock(3000)
    # A request resets the idle timer: 3000 s more is still within the hour.
    assert client.post(CHAT, json=chat_body(SMALL)).status_code == 200
    emu.wait_until(lambda: emu.instance_info()[SMALL]["in_use"] == 0)
    emu.advance_clock(3000)
    assert emu.loaded() == {VISION: [manual], SMALL: [SMALL]}
    emu.advance_clock(600)
    assert emu.loaded() == {VISION: [manual]}  # a manual load has no TTL
    listed = {m["key"]: m for m in client.get("/api/v1/models").json()["models"]}
    assert listed[SMALL]["loaded_instances"] == []


def test_the_requests_ttl_is_used_and_a_model_in_use_never_expires(
    emu: Emulator, client: httpx.Client
) -> None:
    emu.set_jit(True)
    emu.set_stream(0.01, 1000)  # a stream that lasts until the test has looked
    body = {**chat_body(SMALL, stream=True), "ttl": 5}
    with make_client(emu, timeout=30.0) as streamer, streamer.stream("POST", CHAT, json=body) as s:
        assert s.status_code == 200
        emu.wait_until(lambda: emu.instance_info().get(SMALL, {}).get("in_use") == 1)
        assert emu.instance_info()[SMALL]["ttl"] == 5
        emu.advance_clock(60)
        assert emu.loaded() == {SMALL: [SMALL]}  # generating: not idle
        emu.set_stream(0.0, 1000)
        for _ in s.iter_bytes():
            pass
    emu.wait_until(lambda: emu.instance_info()[SMALL]["in_use"] == 0)
    emu.advance_clock(4)
    assert emu.loaded() == {SMALL: [SMALL]}
    emu.advance_clock(1)
    assert emu.loaded() == {}
    bad = client.post(CHAT, json={**chat_body(SMALL), "ttl": 0})
    assert bad.status_code == 400 and "'ttl'" in error_message(bad)


def test_concurrent_jit_requests_for_one_model_load_several_instances(emu: Emulator) -> None:
    # LM Studio bug-tracker #1751: each request arriving while the model is not loaded loads it.
    emu.set_jit(True)
    emu.set_load_delay(30.0)
    first = Background(emu, "POST", CHAT, chat_body(SMALL))
    second = Background(emu, "POST", CHAT, chat_body(SMALL))
    emu.wait_until(lambda: sum(r.path == CHAT for r in emu.requests()) == 2)
    emu.set_load_delay(0.0)
    for request in (first, second):
        outcome = request.join()
        assert isinstance(outcome, httpx.Response) and outcome.status_code == 200
    assert emu.loaded() == {SMALL: [SMALL, f"{SMALL}:2"]}
    assert client_after_jit_uses_the_loaded_model(emu)


def client_after_jit_uses_the_loaded_model(emu: Emulator) -> bool:
    with make_client(emu) as c:
        ok = c.post(CHAT, json=chat_body(SMALL)).status_code == 200
    return ok and emu.loaded() == {SMALL: [SMALL, f"{SMALL}:2"]}


def test_a_jit_load_can_fail(emu: Emulator, client: httpx.Client) -> None:
    emu.set_jit(True)
    emu.fail_next_loads(1, "out of memory", status=500)
    response = client.post(CHAT, json=chat_body(SMALL))
    assert response.status_code == 500
    assert error_message(response) == "out of memory"
    assert emu.loaded() == {}


def test_openai_model_list_follows_jit(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL)
    emu.load_behind(SMALL)
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [SMALL, f"{SMALL}:2"]
    assert all(m["object"] == "model" for m in listed["data"])
    emu.set_jit(True)
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert set(ids) == {m.key for m in default_catalog()} | {f"{SMALL}:2"}


def test_text_completions_whole_and_streamed(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL)
    whole = client.post("/v1/completions", json={"model": SMALL, "prompt": "Once"}).json()
    assert whole["object"] == "text_completion"
    body = {"model": SMALL, "prompt": "Once", "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == whole["choices"][0]["text"]
    assert client.post("/v1/completions", json={"model": SMALL}).status_code == 400


def test_embeddings(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(EMBEDDER)
    emu.load_behind(SMALL)
    answer = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["a", "b"]}).json()
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert len(answer["data"][0]["embedding"]) == 768
    assert client.post("/v1/embeddings", json={"model": SMALL, "input": "a"}).status_code == 400
    assert client.post(CHAT, json=chat_body(EMBEDDER)).status_code == 400


# -- streaming ---------------------------------------------------------------------------


def data_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_stream_sends_chunks_then_done(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL)
    emu.set_stream(0.001, 4)
    with client.stream("POST", CHAT, json=chat_body(SMALL, stream=True)) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = list(data_events(response))
    assert len(events) == 5
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    whole = client.post(CHAT, json=chat_body(SMALL)).json()
    assert streamed == whole["choices"][0]["message"]["content"]


def test_stream_chunks_are_not_held_back(emu: Emulator, client: httpx.Client) -> None:
    emu.load_behind(SMALL)
    # A pause far longer than the read timeout: the first chunk can only arrive
    # if it left before the rest were written.
    emu.set_stream(60, 3)
    with client.stream("POST", CHAT, json=chat_body(SMALL, stream=True)) as response:
        first = json.loads(next(data_events(response)))
        assert first["object"] == "chat.completion.chunk"
        (record,) = emu.requests()
        assert record.status == 200
        assert record.t_done is None


def test_client_leaving_mid_stream_leaves_the_server_healthy(
    emu: Emulator, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    emu.load_behind(SMALL)
    emu.set_stream(0.001, 1_000_000)
    with client.stream("POST", CHAT, json=chat_body(SMALL, stream=True)) as response:
        events = data_events(response)
        next(events)
        next(events)
    emu.wait_until(lambda: emu.requests()[0].t_done is not None)
    assert client.get("/api/v1/models").status_code == 200
    assert "Traceback" not in capfd.readouterr().err


# -- request log -------------------------------------------------------------------------


def test_request_log_records_every_request_in_order(emu: Emulator, client: httpx.Client) -> None:
    before = time.monotonic()
    client.get("/api/v1/models")
    client.post(LOAD, json={"model": SMALL})
    client.post(LOAD, json={"model": "nobody/nothing"})
    client.get("/_emulator/loaded")
    records = emu.requests()
    assert [(r.method, r.path, r.status) for r in records] == [
        ("GET", "/api/v1/models", 200),
        ("POST", LOAD, 200),
        ("POST", LOAD, 404),
    ]
    assert records[0].body is None
    assert records[1].body == {"model": SMALL}
    assert all(isinstance(r, RequestRecord) and r.authorized for r in records)
    times = [r.t for r in records]
    assert before <= times[0] <= times[1] <= times[2]
    emu.clear_requests()
    assert emu.requests() == []


def test_request_log_is_bounded() -> None:
    with Emulator(request_log_limit=3) as emulator, make_client(emulator) as c:
        for n in range(5):
            c.get(f"/api/v1/models?n={n}")
        assert [r.path for r in emulator.requests()] == [f"/api/v1/models?n={n}" for n in (2, 3, 4)]


def test_quiet_by_default_verbose_on_request(capfd: pytest.CaptureFixture[str]) -> None:
    with Emulator() as quiet, make_client(quiet) as c:
        c.get("/api/v1/models")
    assert capfd.readouterr().err == ""
    with Emulator(verbose=True) as loud, make_client(loud) as c:
        c.get("/api/v1/models")
    assert "GET /api/v1/models" in capfd.readouterr().err


# -- HTTP control API --------------------------------------------------------------------


def test_control_endpoints_steer_the_emulator(emu: Emulator, client: httpx.Client) -> None:
    def post(name: str, body: Any) -> dict[str, Any]:
        response = client.post(f"/_emulator/{name}", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    post("load_delay", {"seconds": 0.5, "model": SMALL})
    post("fail_next_loads", {"n": 2, "message": "boom", "status": 503})
    post("hang_unloads", {"on": True})
    post("jit", {"on": True})
    post("v0_only", {"on": True})
    post("stream", {"interval": 0.25, "chunks": 3})
    post("error_style", {"style": "string"})
    post("token", {"token": "abc"})
    post("auto_evict", {"on": False})
    post("legacy_load_answer", {"on": True})
    post("advance_clock", {"seconds": 90})
    state = emu.state()
    assert (state["auto_evict"], state["legacy_load_answer"]) == (False, True)
    assert state["clock_offset"] == 90
    assert state["model_load_delays"] == {SMALL: 0.5}
    assert state["fail_next_loads"] == 2
    assert state["hang_unloads"] is True
    assert state["jit"] is True
    assert state["v0_only"] is True
    assert (state["stream_interval"], state["stream_chunks"]) == (0.25, 3)
    assert state["error_style"] == "string"
    assert state["token_set"] is True
    post("token", {"token": None})
    post("load_delay", {"seconds": 0})
    assert emu.state()["token_set"] is False
    assert emu.state()["model_load_delays"] == {}

    instance_id = post("load_behind", {"key": SMALL, "config": {"context_length": 2048}})
    assert instance_id == {"instance_id": SMALL}
    assert client.get("/_emulator/loaded").json() == {"loaded": {SMALL: [SMALL]}}
    instances = client.get("/_emulator/instances").json()["instances"]
    assert instances[SMALL] == {
        "model": SMALL,
        "jit": False,
        "ttl": None,
        "idle_seconds": instances[SMALL]["idle_seconds"],
        "in_use": 0,
    }
    post("unload_behind", {"instance_id": SMALL})
    assert emu.loaded() == {}
    assert client.get("/_emulator/state").json()["loaded"] == {}


def test_control_requests_endpoint_serves_the_log(emu: Emulator, client: httpx.Client) -> None:
    client.get("/api/v0/models")
    middle = time.monotonic()
    client.post(LOAD, json={"model": SMALL})
    records = client.get("/_emulator/requests").json()["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/api/v0/models", 200),
        ("POST", LOAD, 200),
    ]
    assert set(records[1]) == {"t", "method", "path", "body", "status", "authorized", "t_done"}
    assert records[1]["body"] == {"model": SMALL}
    later = client.get("/_emulator/requests", params={"since": middle}).json()["requests"]
    assert [r["path"] for r in later] == [LOAD]
    assert client.post("/_emulator/clear_requests").status_code == 200
    assert client.get("/_emulator/requests").json() == {"requests": []}


@pytest.mark.parametrize(
    ("method", "name", "body", "status"),
    [
        ("POST", "load_delay", {"seconds": -1}, 400),
        ("POST", "load_delay", {"seconds": 1, "model": "nobody/nothing"}, 404),
        ("POST", "fail_next_loads", {"n": "two"}, 400),
        ("POST", "fail_next_loads", {"n": 1, "status": 200}, 400),
        ("POST", "hang_unloads", {}, 400),
        ("POST", "load_behind", {"key": "nobody/nothing"}, 404),
        ("POST", "unload_behind", {"instance_id": "ghost"}, 404),
        ("POST", "stream", {"chunks": 0}, 400),
        ("POST", "error_style", {"style": "xml"}, 400),
        ("POST", "token", {}, 400),
        ("POST", "jit", [True], 400),
        ("POST", "nothing", {}, 404),
        ("GET", "load_delay", None, 404),
    ],
)
def test_bad_control_requests_are_refused(
    emu: Emulator, client: httpx.Client, method: str, name: str, body: Any, status: int
) -> None:
    response = client.request(method, f"/_emulator/{name}", json=body)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert emu.requests() == []


# -- the module as a program -------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lmkeeperd.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_cli_prints_its_url_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    token = "cli-s3cret"
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(catalog_to_json(default_catalog()[:3])))
    args = ("--port", "0", "--token-env", "EMU_TOKEN", "--catalog", str(catalog), "--jit")
    with run_cli(*args, env={"EMU_TOKEN": token}) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {"Authorization": f"Bearer {token}"}
        with make_client(url, headers=headers) as c:
            assert len(c.get("/api/v1/models").json()["models"]) == 3
            assert c.post(CHAT, json=chat_body(SMALL)).status_code == 200
            assert c.get("/api/v1/models", headers={"Authorization": ""}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=JOIN_SECONDS)
    assert proc.returncode == 0
    assert err == ""
    assert token not in out + url


def test_cli_refuses_a_missing_token_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EMU_ABSENT"}
    with subprocess.Popen(
        [sys.executable, "-m", "lmkeeperd.emulator", "--port", "0", "--token-env", "EMU_ABSENT"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        out, err = proc.communicate(timeout=JOIN_SECONDS)
    assert proc.returncode == 2
    assert "EMU_ABSENT" in err
    assert out == ""
