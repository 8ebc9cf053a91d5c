"""Where the emulator's channel answers exactly as LM Studio does (lmstudio-real.md,
"The channel in practice"): lastUsedTime, formats, exact queries, silence on bad
frames, the real warning kinds, the strict switch, and the SDKs' everyday calls."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lmkeeperd.emulator import Emulator
from lmkeeperd.emulator.catalog import default_catalog

LLM = "qwen/qwen2.5-0.5b-instruct"
EMBEDDING = "text-embedding-nomic-embed-text-v1.5"
SDK_FORMATS = {"gguf", "safetensors", "onnx", "ggml", "pte", "mlx_placeholder", "torch_safetensors"}


@contextmanager
def open_channel(emu: Emulator, namespace: str = "/llm") -> Iterator[ClientConnection]:
    with connect(emu.url.replace("http://", "ws://") + namespace, proxy=None) as ws:
        frame = {"authVersion": 1, "clientIdentifier": "guest:abc", "clientPasskey": "x"}
        ws.send(json.dumps(frame))
        assert json.loads(ws.recv(timeout=10)) == {"success": True}
        yield ws


def send(ws: ClientConnection, message: Any) -> None:
    ws.send(message if isinstance(message, str) else json.dumps(message))


def answer(ws: ClientConnection, message: Any) -> Any:
    send(ws, message)
    return json.loads(ws.recv(timeout=10))


def rpc(endpoint: str, call_id: int, parameter: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": call_id}
    if parameter is not None:
        message["parameter"] = parameter
    return message


def lookup(identifier: str, throw: bool) -> dict[str, Any]:
    query = {"type": "query", "query": {"identifier": identifier}}
    return {"specifier": query, "throwIfNotFound": throw}


def silent(ws: ClientConnection) -> bool:
    """Nothing arrives within a short while (a keepAlive proves the socket still works)."""
    send(ws, {"type": "keepAlive"})
    return bool(json.loads(ws.recv(timeout=10)) == {"type": "keepAliveAck"})


@pytest.fixture
def llm(emulator: Emulator) -> Iterator[ClientConnection]:
    with open_channel(emulator) as ws:
        yield ws


def test_last_used_time_is_null_while_the_instance_is_in_use(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    httpx.post(emulator.url + "/v1/chat/completions", json={"model": LLM, "messages": []})
    emulator.set_stream(interval=0.2, chunks=10)

    def stream() -> None:
        body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", emulator.url + "/v1/chat/completions", json=body) as reply:
            for _ in reply.iter_lines():
                pass

    with open_channel(emulator) as ws:
        before = answer(ws, rpc("listLoaded", 0))["result"][0]["lastUsedTime"]
        assert isinstance(before, int)  # the first request ended: set
        thread = threading.Thread(target=stream)
        thread.start()
        emulator.wait_until(lambda: emulator.processing_state(LLM).status == "generating")
        assert answer(ws, rpc("listLoaded", 1))["result"][0]["lastUsedTime"] is None
        info = answer(ws, rpc("getModelInfo", 2, lookup(LLM, True)))["result"]
        assert info["lastUsedTime"] is None
        thread.join(30)
        # The client has read the last chunk; the server's handler ends the request just after.
        emulator.wait_until(lambda: emulator.processing_state(LLM).status == "idle", timeout=10)
        after = answer(ws, rpc("listLoaded", 3))["result"][0]["lastUsedTime"]
    assert isinstance(after, int) and after >= before


def test_formats_are_lm_studios_own(emulator: Emulator) -> None:
    mlx = [m.key for m in default_catalog() if m.format == "mlx"]
    assert mlx, "the catalog should have an MLX model to check"
    with open_channel(emulator, "/system") as ws:
        listed = answer(ws, rpc("listDownloadedModels", 0))["result"]
    formats = {m["modelKey"]: m["format"] for m in listed}
    assert set(formats.values()) <= SDK_FORMATS
    assert all(formats[key] == "safetensors" for key in mlx)
    emulator.load_behind(mlx[0])
    with open_channel(emulator) as ws:
        assert answer(ws, rpc("listLoaded", 0))["result"][0]["format"] == "safetensors"


def test_an_identifier_query_matches_exactly(emulator: Emulator, llm: ClientConnection) -> None:
    emulator.load_behind(LLM)
    second = emulator.load_behind(LLM)
    assert second == LLM + ":2"
    emulator.unload_behind(LLM)
    # Only `key:2` is loaded now: a query for `key` finds nothing.
    missing = answer(llm, rpc("getModelInfo", 0, lookup(LLM, True)))
    assert missing["type"] == "rpcError"
    assert missing["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"
    found = answer(llm, rpc("getModelInfo", 1, lookup(second, True)))["result"]
    assert found["identifier"] == second
    # ...and `key:2` is not `key:20` or a prefix match either.
    assert answer(llm, rpc("getModelInfo", 2, lookup(LLM + ":", False))) == {
        "type": "rpcResult",
        "callId": 2,
    }


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        {"no": "type"},
        {"type": "somethingElse", "callId": 1},
        {"type": "rpcCall", "endpoint": "listLoaded"},
        {"type": "rpcCall", "endpoint": "listLoaded", "callId": "1"},
        {"type": "rpcCall", "endpoint": "listLoaded", "callId": True},
        {"type": "rpcCall", "endpoint": 5, "callId": 1},
        {"type": "channelCreate", "endpoint": "getOrLoad"},
        {"type": "channelSend", "channelId": 9, "message": {}},
        {"type": "signalUnsubscribe", "subscribeId": 3},
        {"type": "communicationWarning", "warning": "from the client"},
    ],
)
def test_frames_that_fail_the_schema_get_no_answer(llm: ClientConnection, frame: Any) -> None:
    send(llm, frame)
    assert silent(llm)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (rpc("noSuchThing", 0), "rpcEndpointUnknown"),
        ({"type": "channelCreate", "endpoint": "x", "channelId": 0}, "channelEndpointUnknown"),
        ({"type": "signalSubscribe", "endpoint": "x", "subscribeId": 0}, "signalEndpointUnknown"),
        (
            {"type": "writableSignalSubscribe", "endpoint": "x", "subscribeId": 0},
            "writableSignalEndpointUnknown",
        ),
    ],
)
def test_unknown_endpoints_get_the_real_warning_kinds(
    llm: ClientConnection, frame: dict[str, Any], kind: str
) -> None:
    warning = answer(llm, frame)
    assert warning["type"] == "communicationWarning" and warning["kind"] == kind
    assert "endpoint = " in warning["warning"]


def test_at_most_five_warnings_of_any_kind_per_connection(
    emulator: Emulator, llm: ClientConnection
) -> None:
    kinds = [
        answer(llm, rpc("noSuchThing", 0))["kind"],
        answer(llm, {"type": "channelCreate", "endpoint": "x", "channelId": 1})["kind"],
        answer(llm, {"type": "signalSubscribe", "endpoint": "x", "subscribeId": 2})["kind"],
        answer(llm, rpc("listLoaded", 3, {"unexpected": 1}))["kind"],
        answer(llm, rpc("noSuchThing", 4))["kind"],
    ]
    assert len(kinds) == 5
    send(llm, rpc("noSuchThing", 5))
    assert silent(llm)
    with open_channel(emulator) as fresh:  # the count is per connection
        assert answer(fresh, rpc("noSuchThing", 0))["kind"] == "rpcEndpointUnknown"


def test_strict_mode_answers_not_found_with_an_error_even_without_throw(
    emulator: Emulator, llm: ClientConnection
) -> None:
    lenient = answer(llm, rpc("getInstanceProcessingState", 0, lookup(LLM, False)))
    assert lenient == {"type": "rpcResult", "callId": 0}
    emulator.set_channel_strict(True)
    assert emulator.state()["channel_strict"] is True
    for call_id, endpoint in enumerate(("getInstanceProcessingState", "getModelInfo"), 1):
        strict = answer(llm, rpc(endpoint, call_id, lookup(LLM, False)))
        assert strict["type"] == "rpcError"
        assert strict["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"
    reference = {"type": "instanceReference", "instanceReference": "gone"}
    gone = answer(llm, rpc("getModelInfo", 9, {"specifier": reference, "throwIfNotFound": False}))
    assert gone["error"]["displayData"]["code"] == "generic.specificModelUnloaded"
    emulator.load_behind(LLM)
    found = answer(llm, rpc("getInstanceProcessingState", 10, lookup(LLM, False)))
    assert found["result"] == {"status": "idle", "queued": 0}


def test_strict_switch_over_http_control(emulator: Emulator) -> None:
    reply = httpx.post(emulator.url + "/_emulator/channel_strict", json={"on": True})
    assert reply.status_code == 200
    assert httpx.get(emulator.url + "/_emulator/state").json()["channel_strict"] is True


def test_list_downloaded_models_lists_the_catalog(emulator: Emulator) -> None:
    with open_channel(emulator, "/system") as ws:
        listed = answer(ws, rpc("listDownloadedModels", 0))["result"]
        bad = answer(ws, rpc("listDownloadedModels", 1, {}))
    assert [m["modelKey"] for m in listed] == [m.key for m in default_catalog()]
    by_key = {m["modelKey"]: m for m in listed}
    assert by_key[LLM]["type"] == "llm" and "vision" in by_key[LLM]
    assert by_key[EMBEDDING]["type"] == "embedding" and "vision" not in by_key[EMBEDDING]
    assert all("identifier" not in m for m in listed)
    assert bad["kind"] == "rpcParameterTypeError"


def test_unload_model_by_identifier(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.load_behind(LLM)
    emulator.load_behind(EMBEDDING)
    with open_channel(emulator) as llm, open_channel(emulator, "/embedding") as embedding:
        assert answer(llm, rpc("unloadModel", 0, {"identifier": LLM + ":2"})) == {
            "type": "rpcResult",
            "callId": 0,
        }
        wrong_namespace = answer(llm, rpc("unloadModel", 1, {"identifier": EMBEDDING}))
        assert wrong_namespace["type"] == "rpcError"
        assert wrong_namespace["error"]["displayData"]["code"] == "generic.identifierNotFound"
        assert answer(embedding, rpc("unloadModel", 0, {"identifier": EMBEDDING}))["callId"] == 0
        assert answer(llm, rpc("unloadModel", 2, {"ident": LLM}))["kind"] == (
            "rpcParameterTypeError"
        )
    assert emulator.loaded() == {LLM: [LLM]}
    assert [r.path for r in emulator.requests() if r.method == "POST"] == []


def test_an_unload_that_hangs_holds_its_answer(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.hang_unloads(True)
    with open_channel(emulator) as ws:
        send(ws, rpc("unloadModel", 0, {"identifier": LLM}))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        emulator.hang_unloads(False)
        assert json.loads(ws.recv(timeout=10)) == {"type": "rpcResult", "callId": 0}
    assert emulator.loaded() == {}
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=1)


# -- the loading channels ------------------------------------------------------------


def channel_frames(ws: ClientConnection, message: dict[str, Any]) -> list[Any]:
    """Every frame answering one channelCreate, through its channelClose or channelError."""
    send(ws, message)
    frames = []
    while True:
        frame = json.loads(ws.recv(timeout=10))
        frames.append(frame)
        if frame["type"] in ("channelClose", "channelError"):
            return frames


def create(endpoint: str, channel_id: int, parameter: Any) -> dict[str, Any]:
    return {
        "type": "channelCreate",
        "endpoint": endpoint,
        "channelId": channel_id,
        "creationParameter": parameter,
    }


def test_load_model_channel_loads_another_instance(
    emulator: Emulator, llm: ClientConnection
) -> None:
    emulator.load_behind(LLM)
    frames = channel_frames(llm, create("loadModel", 0, {"modelKey": LLM, "loadConfigStack": {}}))
    assert [f["type"] for f in frames] == ["channelSend"] * 3 + ["channelClose"]
    assert {f["channelId"] for f in frames} == {0}
    messages = [f["message"] for f in frames[:3]]
    assert [m["type"] for m in messages] == ["resolved", "progress", "success"]
    assert messages[0]["info"]["modelKey"] == LLM and "identifier" not in messages[0]["info"]
    assert messages[2]["info"]["identifier"] == LLM + ":2"
    assert emulator.loaded() == {LLM: [LLM, LLM + ":2"]}


def test_get_or_load_channel(emulator: Emulator, llm: ClientConnection) -> None:
    loading = channel_frames(llm, create("getOrLoad", 0, {"identifier": LLM}))
    kinds = [f["message"]["type"] for f in loading if f["type"] == "channelSend"]
    assert kinds == ["startLoading", "loadProgress", "loadSuccess"]
    assert loading[0]["message"]["identifier"] == LLM
    again = channel_frames(llm, create("getOrLoad", 1, {"identifier": LLM}))
    assert [f["type"] for f in again] == ["channelSend", "channelClose"]
    assert again[0]["message"]["type"] == "alreadyLoaded"
    assert again[0]["message"]["info"]["identifier"] == LLM
    assert emulator.loaded() == {LLM: [LLM]}


def test_loading_channels_fail_with_a_channel_error(
    emulator: Emulator, llm: ClientConnection
) -> None:
    (unknown,) = channel_frames(llm, create("getOrLoad", 0, {"identifier": "no/such"}))
    assert unknown["type"] == "channelError" and unknown["channelId"] == 0
    (wrong_domain,) = channel_frames(llm, create("loadModel", 1, {"modelKey": EMBEDDING}))
    assert "of type llm" in wrong_domain["error"]["title"]
    emulator.set_guardrail(max_models=1)
    emulator.load_behind(LLM)
    (refused,) = channel_frames(llm, create("loadModel", 2, {"modelKey": LLM}))
    assert "insufficient system resources" in refused["error"]["title"]
    bad = answer(llm, create("loadModel", 3, {"modelKey": 5}))
    assert bad["kind"] == "channelCreationParameterTypeError"
    with open_channel(emulator, "/system") as system:
        ignored = answer(system, create("getOrLoad", 0, {"identifier": LLM}))
        assert ignored["kind"] == "channelEndpointUnknown"
