"""The official Python SDK (`lmstudio`, pinned in the test extra) against the emulator.

The SDK validates every answer against LM Studio's own schemas (msgspec structs
generated from lmstudio-js), so its everyday calls passing means the emulator's
channel answers as LM Studio does. The frames the SDK sends are recorded by the
emulator and lmkeeperd's channel client must send the same frames for the same
questions, and read the same facts from the answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import lmstudio
import pytest

from lmkeeperd.emulator import Emulator
from lmkeeperd.emulator.catalog import CatalogModel, default_catalog
from lmkeeperd.lmstudio.channel import LMStudioChannel

LLM = "qwen/qwen2.5-0.5b-instruct"
EMBEDDING = "text-embedding-nomic-embed-text-v1.5"
T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


@pytest.fixture
def sdk(emulator: Emulator) -> Iterator[lmstudio.Client]:
    # The synchronous client, pointed at the emulator's host:port: it probes
    # GET /lmstudio-greeting first, then opens one websocket per namespace.
    with lmstudio.Client(emulator.url.removeprefix("http://")) as client:
        yield client


def rpc_frames(emu: Emulator, endpoint: str) -> list[tuple[str, Any]]:
    return [(f.path, f.parameter) for f in emu.frames() if f.endpoint == endpoint]


def test_sdk_lists_every_downloaded_model(emulator: Emulator, sdk: lmstudio.Client) -> None:
    catalog = {model.key: model for model in default_catalog()}
    llms = sdk.llm.list_downloaded()
    embeddings = sdk.embedding.list_downloaded()
    assert {m.model_key for m in llms} == {k for k, m in catalog.items() if m.type == "llm"}
    assert {m.model_key for m in embeddings} == {
        k for k, m in catalog.items() if m.type == "embedding"
    }
    # The catalog has MLX models: the SDK rejects any format outside LM Studio's own.
    assert any(catalog[m.model_key].format == "mlx" for m in llms)
    by_key = {m.model_key: m.info for m in llms}
    assert by_key[LLM].size_bytes == catalog[LLM].size_bytes
    assert ("/system", None) in rpc_frames(emulator, "listDownloadedModels")


def test_sdk_lists_loaded_models_and_reads_their_info(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    emulator.load_behind(LLM, {"context_length": 8192})
    emulator.load_behind(LLM)
    emulator.load_behind(EMBEDDING)
    assert sorted(m.identifier for m in sdk.llm.list_loaded()) == [LLM, LLM + ":2"]
    assert [m.identifier for m in sdk.embedding.list_loaded()] == [EMBEDDING]
    first = sdk.llm.get_model_info(LLM)
    assert (first.identifier, first.model_key, first.context_length) == (LLM, LLM, 8192)
    handles = {m.identifier: m for m in sdk.llm.list_loaded()}
    second = handles[LLM + ":2"].get_info()
    assert second.identifier == LLM + ":2"
    assert second.instance_reference != first.instance_reference
    embedding = sdk.embedding.get_model_info(EMBEDDING)
    assert embedding.model_key == EMBEDDING


def test_sdk_model_info_for_a_model_not_loaded_is_the_sdks_not_found(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    emulator.load_behind(LLM)
    emulator.unload_behind(LLM)
    with pytest.raises(lmstudio.LMStudioModelNotFoundError, match="No model found"):
        sdk.llm.get_model_info(LLM)


def test_sdk_unloads_on_llm_and_embedding(emulator: Emulator, sdk: lmstudio.Client) -> None:
    emulator.load_behind(LLM)
    emulator.load_behind(LLM)
    emulator.load_behind(EMBEDDING)
    sdk.llm.unload(LLM + ":2")
    assert emulator.loaded() == {LLM: [LLM], EMBEDDING: [EMBEDDING]}
    (handle,) = sdk.llm.list_loaded()
    handle.unload()
    sdk.embedding.unload(EMBEDDING)
    assert emulator.loaded() == {}
    assert rpc_frames(emulator, "unloadModel") == [
        ("/llm", {"identifier": LLM + ":2"}),
        ("/llm", {"identifier": LLM}),
        ("/embedding", {"identifier": EMBEDDING}),
    ]
    with pytest.raises(lmstudio.LMStudioServerError):
        sdk.llm.unload(LLM)


def test_sdk_does_not_unload_an_embedding_model_through_llm(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    emulator.load_behind(EMBEDDING)
    with pytest.raises(lmstudio.LMStudioServerError):
        sdk.llm.unload(EMBEDDING)
    assert emulator.loaded() == {EMBEDDING: [EMBEDDING]}


def test_sdk_calls_pass_in_strict_mode(emulator: Emulator, sdk: lmstudio.Client) -> None:
    # The SDKs always send throwIfNotFound: true, so strict mode changes nothing for them.
    emulator.set_channel_strict(True)
    emulator.load_behind(LLM)
    assert sdk.llm.get_model_info(LLM).identifier == LLM
    with pytest.raises(lmstudio.LMStudioModelNotFoundError):
        sdk.llm.get_model_info(LLM + ":2")


# -- the same calls from lmkeeperd's channel client ----------------------------------


def test_lmkeeperd_sends_the_frames_the_sdk_sends(emulator: Emulator, sdk: lmstudio.Client) -> None:
    emulator.load_behind(LLM)
    emulator.load_behind(LLM)
    sdk_loaded = [m.identifier for m in sdk.llm.list_loaded()]
    sdk_info = {i: sdk.llm.get_model_info(i) for i in (LLM, LLM + ":2")}
    with pytest.raises(lmstudio.LMStudioModelNotFoundError):
        sdk.llm.get_model_info(LLM + ":3")
    sdk_frames = [(f.endpoint, f.parameter) for f in emulator.frames() if f.path == "/llm"]
    emulator.clear_frames()

    async def ours() -> tuple[list[Any], list[Any], Any]:
        async with LMStudioChannel(base_url=emulator.url) as channel:
            loaded = await channel.list_loaded()
            info = [await channel.model_info(identifier=i) for i in (LLM, LLM + ":2")]
            gone = await channel.model_info(identifier=LLM + ":3")
            return loaded, info, gone

    loaded, info, gone = run(ours())
    our_frames = [(f.endpoint, f.parameter) for f in emulator.frames() if f.path == "/llm"]
    assert our_frames == sdk_frames
    assert [i.identifier for i in loaded] == sdk_loaded
    for mine in info:
        theirs = sdk_info[mine.identifier]
        assert (mine.model_key, mine.instance_reference, mine.context_length) == (
            theirs.model_key,
            theirs.instance_reference,
            theirs.context_length,
        )
    assert gone is None  # the SDK's "not found" is lmkeeperd's "not loaded"


def test_lmkeeperd_asks_processing_state_as_the_sdk_asks_model_info(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    # getInstanceProcessingState takes getModelInfo's parameter (lmstudio-ws.md); the SDK
    # 1.5 has no call for it, so its getModelInfo frame is the shape to match.
    emulator.load_behind(LLM)
    sdk.llm.get_model_info(LLM)
    (sdk_parameter,) = [f.parameter for f in emulator.frames() if f.endpoint == "getModelInfo"]

    async def ours() -> Any:
        async with LMStudioChannel(base_url=emulator.url) as channel:
            return await channel.processing_state(identifier=LLM)

    state = run(ours())
    (our_parameter,) = [
        f.parameter for f in emulator.frames() if f.endpoint == "getInstanceProcessingState"
    ]
    assert our_parameter == sdk_parameter
    assert (state.status, state.queued) == ("idle", 0)


def test_every_catalog_format_is_one_the_sdk_accepts() -> None:
    from lmkeeperd.emulator.rpc import CHANNEL_FORMATS

    accepted = {"gguf", "safetensors", "onnx", "ggml", "mlx_placeholder", "torch_safetensors"}
    assert set(CHANNEL_FORMATS.values()) <= accepted
    models: list[CatalogModel] = list(default_catalog())
    assert {CHANNEL_FORMATS[m.format] for m in models} <= accepted


# -- loading through the SDK (the getOrLoad and loadModel channels) ---------------------


def test_sdk_model_gets_a_loaded_model_or_loads_it(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    emulator.set_load_delay(0.2)
    handle = sdk.llm.model(LLM)
    assert handle.identifier == LLM and emulator.loaded() == {LLM: [LLM]}
    assert sdk.llm.model(LLM).identifier == LLM  # already loaded: no second load
    loads = [r for r in emulator.requests() if r.path == "/api/v1/models/load"]
    assert loads == []  # the channel, not REST
    assert [f.endpoint for f in emulator.frames() if f.type == "channelCreate"] == [
        "getOrLoad",
        "getOrLoad",
    ]
    assert sdk.embedding.model(EMBEDDING).get_info().model_key == EMBEDDING
    with pytest.raises(lmstudio.LMStudioServerError, match="Cannot find a model"):
        sdk.llm.model("no/such-model")


def test_sdk_load_new_instance_makes_another_instance(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    first = sdk.llm.load_new_instance(LLM)
    second = sdk.llm.load_new_instance(LLM)
    assert (first.identifier, second.identifier) == (LLM, LLM + ":2")
    assert emulator.loaded() == {LLM: [LLM, LLM + ":2"]}
    second.unload()
    assert emulator.loaded() == {LLM: [LLM]}


def test_sdk_load_refused_by_the_guardrail_carries_lm_studios_text(
    emulator: Emulator, sdk: lmstudio.Client
) -> None:
    emulator.set_guardrail(max_models=1)
    sdk.llm.load_new_instance(LLM)
    with pytest.raises(lmstudio.LMStudioServerError, match="insufficient system resources"):
        sdk.llm.load_new_instance(LLM)
    assert emulator.loaded() == {LLM: [LLM]}
