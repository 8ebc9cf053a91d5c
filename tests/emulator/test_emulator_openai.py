"""The emulator's OpenAI-compatible endpoints, JIT loading and streaming.

Waits are on conditions with deadlines (`emu.wait_until`, `wait_for_request`,
thread joins with timeouts); no test sleeps to synchronise or asserts a
duration beyond a generous lower bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from emulator_support import (
    CHAT,
    EIGHT_B,
    EMBEDDER,
    SMALL,
    VISION,
    Background,
    chat_body,
    error_message,
    make_client,
)

from lmkeeperd.emulator import (
    Emulator,
    default_catalog,
)

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
