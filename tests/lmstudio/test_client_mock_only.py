"""LMStudioClient against answers only the MockTransport fake can send: garbled, truncated,
wrong shapes, transport failures (the fake is in tests/lmstudio_contract_support.py)."""

from __future__ import annotations

import httpx
import pytest
from lmstudio_contract_support import (
    QWEN,
    TOKEN,
    TOKEN_ENV,
    FakeLMStudio,
    _fail_with,
    _fake_client,
    failure,
    run,
)

from lmkeeperd.errors import (
    BadResponse,
    ServerRefused,
)
from lmkeeperd.lmstudio.client import LMStudioClient

# ---------------------------------------------------------------- only the mock can send these


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
