"""The SDKs' model-loading channels on the emulated websocket: `loadModel`, `getOrLoad`.

What the official SDKs' `load_new_instance(key)` and `model(key)` open
(lmstudio-real.md, "The channel in practice"): a `channelCreate` whose
`creationParameter` names the model; the server answers on that channel with
`channelSend` messages and ends it with `channelClose`, or fails it with
`channelError`:

    loadModel  {modelKey, identifier?, loadConfigStack, ttlMs?}
        -> resolved {info: ModelInfo}, progress {progress: 1}, success {info: instance}
    getOrLoad  {identifier, loadConfigStack, loadTtlMs?}
        -> alreadyLoaded {info: instance}                       (an instance has that id)
        -> startLoading {identifier, info}, loadProgress {progress: 1},
           loadSuccess {info: instance}                          (a model has that key)

A load here is the emulator's REST load (its delay, injected failures and
guardrail apply; the instance gets no TTL, as every non-JIT instance). The
answers are sent together once the load ends; the load config stack is not read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmkeeperd.emulator.catalog import CatalogModel
from lmkeeperd.emulator.errors import InjectedLoadFailure, NoSuchModel
from lmkeeperd.emulator.state import EmulatorState

LOAD_CHANNELS = ("loadModel", "getOrLoad")


class BadCreation(Exception):
    """The creation parameter does not have the channel's shape."""


def serve_load_channel(
    endpoint: str,
    channel_id: int,
    parameter: Any,
    *,
    domain: str,
    state: EmulatorState,
    generation: int,
    model_info: Callable[[CatalogModel], dict[str, Any]],
    instance_info: Callable[[str], dict[str, Any] | None],
    error: Callable[[str, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Every frame that answers one `channelCreate` of a loading channel."""
    if not isinstance(parameter, dict):
        raise BadCreation("creationParameter: expected object")
    if endpoint == "getOrLoad":
        wanted = parameter.get("identifier")
        if not isinstance(wanted, str):
            raise BadCreation("identifier: expected string")
        found = instance_info(wanted)
        if found is not None:
            return [_send(channel_id, {"type": "alreadyLoaded", "info": found}), _close(channel_id)]
        messages = ("startLoading", "loadProgress", "loadSuccess")
    else:
        wanted = parameter.get("modelKey")
        if not isinstance(wanted, str):
            raise BadCreation("modelKey: expected string")
        if parameter.get("identifier") is not None:
            # The emulator names instances itself (key, key:2, ...), as a REST load does.
            title = "the emulator does not load under a chosen identifier; omit it"
            return [_fail(channel_id, error(title, "generic.pathNotFound"))]
        messages = ("resolved", "progress", "success")
    try:
        model = state.model(wanted)
    except NoSuchModel:
        model = None
    if model is None or model.type != domain:
        title = f'Cannot find a model of type {domain} with the key "{wanted}".'
        return [_fail(channel_id, error(title, "generic.pathNotFound"))]
    try:
        done = state.load(model.key, {}, generation=generation)
    except InjectedLoadFailure as exc:
        return [_fail(channel_id, error(str(exc), "generic.modelLoadFailed"))]
    info = instance_info(done.instance_id) or {}
    first: dict[str, Any] = {"type": messages[0], "info": model_info(model)}
    if messages[0] == "startLoading":
        first["identifier"] = done.instance_id
    return [
        _send(channel_id, first),
        _send(channel_id, {"type": messages[1], "progress": 1.0}),
        _send(channel_id, {"type": messages[2], "info": info}),
        _close(channel_id),
    ]


def _send(channel_id: int, message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "channelSend", "channelId": channel_id, "message": message}


def _close(channel_id: int) -> dict[str, Any]:
    return {"type": "channelClose", "channelId": channel_id}


def _fail(channel_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"type": "channelError", "channelId": channel_id, "error": error}
