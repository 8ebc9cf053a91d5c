"""The emulator's catalog, life and native REST API (list, load, unload), over real HTTP.

Waits are on conditions with deadlines (`emu.wait_until`, `wait_for_request`,
thread joins with timeouts); no test sleeps to synchronise or asserts a
duration beyond a generous lower bound.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator_support import (
    CHAT,
    EMBEDDER,
    LOAD,
    SMALL,
    UNLOAD,
    chat_body,
    error_message,
    make_client,
    models_by_key,
)

from lmkeeperd.emulator import (
    CatalogModel,
    Emulator,
    catalog_to_json,
    default_catalog,
    load_catalog,
    parse_catalog,
)

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
