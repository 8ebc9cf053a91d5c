"""The emulator's websocket channel, spoken to frame by frame (lmstudio-ws.md shapes)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from lmkeeperd.emulator import Emulator
from lmkeeperd.emulator.activity import ActivityTracker

TOKEN = "sk-lm-Abcd1234:ABCDEFGHIJ0123456789"
LLM = "qwen/qwen2.5-0.5b-instruct"
EMBEDDING = "text-embedding-nomic-embed-text-v1.5"


def ws_url(emu: Emulator, namespace: str = "/llm") -> str:
    return emu.url.replace("http://", "ws://") + namespace


def auth(ws: ClientConnection, identifier: str = "guest:abc", passkey: str = "x") -> Any:
    frame = {"authVersion": 1, "clientIdentifier": identifier, "clientPasskey": passkey}
    ws.send(json.dumps(frame))
    return json.loads(ws.recv(timeout=10))


def call(ws: ClientConnection, endpoint: str, call_id: int, **parameter: Any) -> Any:
    message: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": call_id}
    message.update(parameter)
    ws.send(json.dumps(message))
    return json.loads(ws.recv(timeout=10))


def by_identifier(identifier: str, throw: bool = False) -> dict[str, Any]:
    query = {"specifier": {"type": "query", "query": {"identifier": identifier}}}
    return {"parameter": {**query, "throwIfNotFound": throw}}


@pytest.fixture
def channel(emulator: Emulator) -> Iterator[ClientConnection]:
    with connect(ws_url(emulator), proxy=None) as ws:
        assert auth(ws) == {"success": True}
        yield ws


def test_greeting(emulator: Emulator) -> None:
    answer = httpx.get(emulator.url + "/lmstudio-greeting")
    assert answer.status_code == 200
    assert answer.json() == {"lmstudio": True}


def test_list_loaded_matches_the_rest_listing(
    emulator: Emulator, channel: ClientConnection
) -> None:
    emulator.load_behind(LLM, {"context_length": 8192})
    emulator.load_behind(LLM)
    emulator.load_behind(EMBEDDING)
    answer = call(channel, "listLoaded", 0)
    assert answer["type"] == "rpcResult" and answer["callId"] == 0
    listed = {info["identifier"]: info for info in answer["result"]}
    rest = httpx.get(emulator.url + "/api/v1/models").json()["models"]
    rest_llm = {
        instance["id"]: instance["config"]
        for model in rest
        if model["type"] == "llm"
        for instance in model["loaded_instances"]
    }
    assert set(listed) == set(rest_llm) == {LLM, LLM + ":2"}
    for identifier, info in listed.items():
        assert info["type"] == "llm" and info["modelKey"] == LLM
        assert info["contextLength"] == rest_llm[identifier]["context_length"]
        assert info["ttlMs"] is None and info["lastUsedTime"] is None
        assert isinstance(info["instanceReference"], str)
    assert listed[LLM]["instanceReference"] != listed[LLM + ":2"]["instanceReference"]
    # The reference is stable while the instance lives.
    again = {i["identifier"]: i for i in call(channel, "listLoaded", 1)["result"]}
    assert again[LLM]["instanceReference"] == listed[LLM]["instanceReference"]


def test_embedding_namespace_lists_embedding_instances(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.load_behind(EMBEDDING)
    with connect(ws_url(emulator, "/embedding"), proxy=None) as ws:
        auth(ws)
        result = call(ws, "listLoaded", 0)["result"]
    assert [(i["identifier"], i["type"]) for i in result] == [(EMBEDDING, "embedding")]


def test_unknown_endpoint_is_a_warning_and_never_an_answer(channel: ClientConnection) -> None:
    warning = call(channel, "noSuchEndpoint", 7)
    assert warning == {
        "type": "communicationWarning",
        "warning": "Received rpcCall for unknown endpoint, endpoint = noSuchEndpoint",
        "kind": "rpcEndpointUnknown",
    }
    # The next frame is the answer to keepAlive: nothing answered call 7 in between.
    channel.send(json.dumps({"type": "keepAlive"}))
    assert json.loads(channel.recv(timeout=10)) == {"type": "keepAliveAck"}


def test_a_parameter_where_none_is_taken_is_a_type_warning(channel: ClientConnection) -> None:
    warning = call(channel, "listLoaded", 0, parameter={})
    assert warning["type"] == "communicationWarning"
    assert warning["kind"] == "rpcParameterTypeError"
    assert "endpointName = listLoaded" in warning["warning"]


def test_warnings_stop_after_five(channel: ClientConnection) -> None:
    for call_id in range(5):
        assert call(channel, "nope", call_id)["type"] == "communicationWarning"
    channel.send(json.dumps({"type": "rpcCall", "endpoint": "nope", "callId": 5}))
    channel.send(json.dumps({"type": "keepAlive"}))
    assert json.loads(channel.recv(timeout=10)) == {"type": "keepAliveAck"}


def test_model_info_and_processing_state_lookups(
    emulator: Emulator, channel: ClientConnection
) -> None:
    emulator.load_behind(LLM)
    info = call(channel, "getModelInfo", 0, **by_identifier(LLM))["result"]
    reference = {"type": "instanceReference", "instanceReference": info["instanceReference"]}
    by_reference = {"parameter": {"specifier": reference, "throwIfNotFound": True}}
    assert call(channel, "getModelInfo", 1, **by_reference)["result"] == info
    state = call(channel, "getInstanceProcessingState", 2, **by_reference)
    assert state == {"type": "rpcResult", "callId": 2, "result": {"status": "idle", "queued": 0}}
    # Not found without throwing: an rpcResult with no result member at all.
    absent = call(channel, "getInstanceProcessingState", 3, **by_identifier("nope"))
    assert absent == {"type": "rpcResult", "callId": 3}
    failed = call(channel, "getModelInfo", 4, **by_identifier("nope", throw=True))
    assert failed["type"] == "rpcError" and failed["callId"] == 4
    error = failed["error"]
    assert error["title"] == error["rootTitle"] == "No model found that fits the query."
    assert error["displayData"]["code"] == "generic.noModelMatchingQuery"
    assert error["displayData"]["loadedModelsSample"] == [LLM]
    emulator.unload_behind(LLM)
    gone = call(channel, "getModelInfo", 5, **by_reference)
    assert gone["error"]["displayData"]["code"] == "generic.specificModelUnloaded"


def test_system_version(emulator: Emulator) -> None:
    with connect(ws_url(emulator, "/system"), proxy=None) as ws:
        auth(ws)
        result = call(ws, "version", 0)["result"]
    assert isinstance(result["version"], str) and isinstance(result["build"], int)


def test_real_traffic_drives_the_processing_state(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    # Two streams held open by a slow chunk interval, on one instance.
    emulator.set_stream(interval=0.3, chunks=8)
    results: list[int] = []

    def stream() -> None:
        body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", emulator.url + "/v1/chat/completions", json=body) as answer:
            results.append(sum(1 for _ in answer.iter_lines()))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    emulator.wait_until(lambda: emulator.processing_state(LLM).queued == 2, timeout=10)
    assert emulator.processing_state(LLM).status == "generating"
    for thread in threads:
        thread.join(30)
    assert len(results) == 2
    # The client has read the last chunk; the server's handler ends the request just after.
    emulator.wait_until(lambda: emulator.processing_state(LLM).status == "idle", timeout=10)
    with connect(ws_url(emulator), proxy=None) as ws:
        auth(ws)
        info = call(ws, "listLoaded", 0)["result"][0]
        state = call(ws, "getInstanceProcessingState", 1, **by_identifier(LLM))["result"]
    assert state == {"status": "idle", "queued": 0}
    assert isinstance(info["lastUsedTime"], int) and info["lastUsedTime"] > 0


def test_embeddings_set_the_last_used_time(emulator: Emulator) -> None:
    emulator.load_behind(EMBEDDING)
    answer = httpx.post(emulator.url + "/v1/embeddings", json={"model": EMBEDDING, "input": "x"})
    assert answer.status_code == 200
    with connect(ws_url(emulator, "/embedding"), proxy=None) as ws:
        auth(ws)
        assert call(ws, "listLoaded", 0)["result"][0]["lastUsedTime"] is not None


def test_tracker_phases_and_queue() -> None:
    tracker = ActivityTracker(wall_ms=lambda: 1234)
    with tracker.serving("a", "embedding"):
        assert tracker.state("a").status == "computingEmbedding"
        with tracker.serving("a", "completion") as second:
            second.generating()
            # The oldest request in flight is the current one; queued counts both.
            assert (tracker.state("a").status, tracker.state("a").queued) == (
                "computingEmbedding",
                2,
            )
        # One request still in flight: lastUsedTime is null while in use (lmstudio-real.md).
        assert tracker.last_used("a") is None
    assert (tracker.state("a").status, tracker.state("a").queued) == ("idle", 0)
    assert tracker.last_used("a") == 1234


# -- auth ------------------------------------------------------------------------------


def test_auth_with_the_matching_token(emulator: Emulator) -> None:
    emulator.set_token(TOKEN)
    with connect(ws_url(emulator), proxy=None) as ws:
        assert auth(ws, "Abcd1234", "ABCDEFGHIJ0123456789") == {"success": True}


@pytest.mark.parametrize(
    ("identifier", "passkey"),
    [("Abcd1234", "ABCDEFGHIJ0123456780"), ("Abcd1235", "ABCDEFGHIJ0123456789"), ("guest:x", "y")],
)
def test_auth_refused_then_closed(emulator: Emulator, identifier: str, passkey: str) -> None:
    emulator.set_token(TOKEN)
    with connect(ws_url(emulator), proxy=None) as ws:
        answer = auth(ws, identifier, passkey)
        assert answer["success"] is False and "Failed to validate client" in answer["error"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_auth_refused_switch_refuses_even_the_right_token(emulator: Emulator) -> None:
    emulator.set_token(TOKEN)
    emulator.refuse_channel_auth(True)
    with connect(ws_url(emulator), proxy=None) as ws:
        assert auth(ws, "Abcd1234", "ABCDEFGHIJ0123456789")["success"] is False


def test_auth_times_out_and_ignores_junk_before_it() -> None:
    with Emulator(channel_auth_timeout=0.5) as emu, connect(ws_url(emu), proxy=None) as ws:
        ws.send("not json")
        ws.send(json.dumps({"authVersion": 2}))
        answer = json.loads(ws.recv(timeout=10))
        assert answer == {"success": False, "error": "Authentication timed out"}


# -- fault switches --------------------------------------------------------------------


def test_channel_off_answers_like_an_unknown_endpoint(emulator: Emulator) -> None:
    emulator.set_channel(False)
    with pytest.raises(InvalidStatus) as caught:
        connect(ws_url(emulator), proxy=None)
    assert caught.value.response.status_code == 200
    assert json.loads(caught.value.response.body or b"") == {
        "error": "Unexpected endpoint or method. (GET /llm)"
    }


def test_rpc_missing_switch_hides_the_processing_state(
    emulator: Emulator, channel: ClientConnection
) -> None:
    emulator.load_behind(LLM)
    emulator.set_channel_rpc_missing(True)
    warning = call(channel, "getInstanceProcessingState", 0, **by_identifier(LLM))
    assert warning["kind"] == "rpcEndpointUnknown"
    assert call(channel, "listLoaded", 1)["type"] == "rpcResult"


def test_slow_switch_delays_replies(emulator: Emulator, channel: ClientConnection) -> None:
    emulator.set_channel_delay(1.5)  # past the 0.5 s wait, short for the teardown
    channel.send(json.dumps({"type": "rpcCall", "endpoint": "listLoaded", "callId": 0}))
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.5)
    emulator.set_channel_delay(0)


def test_switches_over_http_control(emulator: Emulator) -> None:
    for name, body in [
        ("channel", {"on": False}),
        ("channel_auth_refused", {"on": True}),
        ("channel_rpc_missing", {"on": True}),
        ("channel_delay", {"seconds": 1.5}),
        ("channel_auth_timeout", {"seconds": 2}),
    ]:
        answer = httpx.post(f"{emulator.url}/_emulator/{name}", json=body)
        assert answer.status_code == 200, answer.text
    state = httpx.get(emulator.url + "/_emulator/state").json()
    assert state["channel"] is False and state["channel_auth_refused"] is True
    assert state["channel_rpc_missing"] is True
    assert (state["channel_delay"], state["channel_auth_timeout"]) == (1.5, 2.0)
    bad = httpx.post(emulator.url + "/_emulator/channel_delay", json={"seconds": -1})
    assert bad.status_code == 400 and "seconds" in bad.json()["error"]
    assert httpx.get(emulator.url + "/_emulator/frames").json() == {"frames": []}


def test_frames_are_logged(emulator: Emulator, channel: ClientConnection) -> None:
    call(channel, "listLoaded", 0)
    frames = emulator.frames()
    assert [(f.path, f.type, f.endpoint) for f in frames] == [
        ("/llm", "auth", None),
        ("/llm", "rpcCall", "listLoaded"),
    ]
    assert [r.path for r in emulator.requests()] == ["/llm"]
    assert emulator.requests()[0].status == 101


def test_going_down_cuts_the_channel(emulator: Emulator, channel: ClientConnection) -> None:
    emulator.go_down()
    with pytest.raises(ConnectionClosed):
        channel.recv(timeout=10)
