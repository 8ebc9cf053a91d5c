"""The RPC endpoints of the emulated websocket channel, as in lmstudio-ws.md.

`Dispatcher.dispatch(message)` turns one client frame (already parsed JSON,
already authenticated) into the frames to answer with: `rpcResult`, `rpcError`,
`communicationWarning` or `keepAliveAck`. No sockets here; the transport is ws.py.

As LM Studio does (lmstudio-real.md, "The channel in practice"): a frame that
fails the envelope schema gets no answer at all; an unknown endpoint gets a
`communicationWarning` of the real kind (`rpcEndpointUnknown`,
`channelEndpointUnknown`, ...), at most MAX_WARNINGS per connection; a query by
identifier matches that identifier exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmkeeperd.emulator.activity import ActivityTracker
from lmkeeperd.emulator.catalog import CatalogModel
from lmkeeperd.emulator.channel_switches import ChannelSwitches
from lmkeeperd.emulator.errors import NoSuchInstance
from lmkeeperd.emulator.load_channels import LOAD_CHANNELS, BadCreation, serve_load_channel
from lmkeeperd.emulator.state import EmulatorState

# What `/system` `version` reports: a 0.4 server (channel, processing state, API tokens).
EMULATED_VERSION = {"version": "0.4.0", "build": 1}

# LM Studio stops warning after this many communicationWarnings on one connection.
MAX_WARNINGS = 5

_NAMESPACE_TYPES = {"/llm": "llm", "/embedding": "embedding"}
_QUERY_KEYS = frozenset({"domain", "identifier", "path", "vision", "deviceIdentifier"})
# The channel's `format` (ModelCompatibilityType.ts) from the REST one: an MLX model is
# safetensors files on disk, and SDK clients reject any value outside that type.
CHANNEL_FORMATS = {"gguf": "gguf", "mlx": "safetensors", None: "gguf"}
# Client envelopes and the integer id each must carry (lmstudio-ws.md, "Envelopes").
_ENVELOPES = {
    "rpcCall": "callId",
    "channelCreate": "channelId",
    "channelSend": "channelId",
    "channelAck": "channelId",
    "signalSubscribe": "subscribeId",
    "signalUnsubscribe": "subscribeId",
    "writableSignalSubscribe": "subscribeId",
    "writableSignalUnsubscribe": "subscribeId",
    "writableSignalUpdate": "subscribeId",
}
# The endpoint-carrying envelopes this emulator serves none of, and their warning kind.
_UNKNOWN_KINDS = {
    "channelCreate": "channelEndpointUnknown",
    "signalSubscribe": "signalEndpointUnknown",
    "writableSignalSubscribe": "writableSignalEndpointUnknown",
}

_Endpoint = Callable[[bool, Any], tuple[bool, Any]]


@dataclass(frozen=True, slots=True)
class InstanceView:
    model: CatalogModel
    identifier: str
    config: dict[str, Any]


class _BadParameter(Exception):
    pass


class _RpcFailure(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        super().__init__(error["title"])


class Dispatcher:
    """One connection's RPC handling (it counts that connection's warnings)."""

    def __init__(
        self,
        namespace: str,
        state: EmulatorState,
        activity: ActivityTracker,
        switches: ChannelSwitches,
        generation: int,
    ) -> None:
        self.namespace = namespace
        self._state = state
        self._activity = activity
        self._switches = switches
        self._generation = generation
        self._warnings = 0

    def dispatch(self, message: Any) -> list[dict[str, Any]]:
        """The frames answering one client frame (often none)."""
        if not isinstance(message, dict):
            return []  # fails the schema: LM Studio only logs it
        kind = message.get("type")
        if kind == "keepAlive":
            return [{"type": "keepAliveAck"}]
        id_name = _ENVELOPES.get(kind) if isinstance(kind, str) else None
        if id_name is None or not _is_id(message.get(id_name)):
            return []  # communicationWarning from the client, or not an envelope at all
        if kind == "rpcCall":
            return self._rpc(message) if isinstance(message.get("endpoint"), str) else []
        loading = kind == "channelCreate" and message.get("endpoint") in LOAD_CHANNELS
        if loading and self.namespace != "/system":
            return self._load_channel(message)
        warning_kind = _UNKNOWN_KINDS.get(str(kind))
        if warning_kind is None:
            return []  # about a channel or signal that was never opened
        endpoint = message.get("endpoint")
        if not isinstance(endpoint, str):
            return []
        return self._warn(
            f"Received {kind} for unknown endpoint, endpoint = {endpoint}", warning_kind
        )

    def _warn(self, text: str, kind: str) -> list[dict[str, Any]]:
        self._warnings += 1
        if self._warnings > MAX_WARNINGS:
            return []
        return [{"type": "communicationWarning", "warning": text, "kind": kind}]

    def _rpc(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        endpoint, call_id = message["endpoint"], message["callId"]
        handler = self._endpoints().get(endpoint)
        if handler is None:
            text = f"Received rpcCall for unknown endpoint, endpoint = {endpoint}"
            return self._warn(text, "rpcEndpointUnknown")
        try:
            has_result, result = handler("parameter" in message, message.get("parameter"))
        except _BadParameter as exc:
            text = (
                f"Received invalid parameter for rpcCall, endpointName = {endpoint}, "
                f"parameter = {message.get('parameter')!r}. Zod error: {exc}"
            )
            return self._warn(text, "rpcParameterTypeError")
        except _RpcFailure as exc:
            return [{"type": "rpcError", "callId": call_id, "error": exc.error}]
        answer: dict[str, Any] = {"type": "rpcResult", "callId": call_id}
        if has_result:
            answer["result"] = result
        return [answer]

    def _endpoints(self) -> dict[str, _Endpoint]:
        if self.namespace == "/system":
            return {"version": self._version, "listDownloadedModels": self._downloaded}
        endpoints: dict[str, _Endpoint] = {
            "listLoaded": self._list_loaded,
            "getModelInfo": self._model_info,
            "unloadModel": self._unload,
        }
        if not self._switches.rpc_missing:
            endpoints["getInstanceProcessingState"] = self._processing_state
        return endpoints

    # -- endpoints -------------------------------------------------------------------

    def _version(self, given: bool, parameter: Any) -> tuple[bool, Any]:
        _no_parameter(given)
        return True, dict(EMULATED_VERSION)

    def _downloaded(self, given: bool, parameter: Any) -> tuple[bool, Any]:
        """Every model in the catalog as a ModelInfo (LlmInfo or EmbeddingModelInfo)."""
        _no_parameter(given)
        return True, [_model_info(model) for model, _ in self._state.models()]

    def _list_loaded(self, given: bool, parameter: Any) -> tuple[bool, Any]:
        _no_parameter(given)
        return True, [self._info(view) for view in self._instances()]

    def _model_info(self, given: bool, parameter: Any) -> tuple[bool, Any]:
        view = self._find(given, parameter)
        return (False, None) if view is None else (True, self._info(view))

    def _processing_state(self, given: bool, parameter: Any) -> tuple[bool, Any]:
        view = self._find(given, parameter)
        if view is None:
            return False, None
        state = self._activity.state(view.identifier)
        return True, {"status": state.status, "queued": state.queued}

    def _unload(self, given: bool, parameter: Any) -> tuple[bool, Any]:
        """`{identifier}`: unload that instance of this namespace's type; no result."""
        if not given or not isinstance(parameter, dict):
            raise _BadParameter("expected an object {identifier}")
        identifier = parameter.get("identifier")
        if not isinstance(identifier, str):
            raise _BadParameter("identifier: expected string")
        if not any(view.identifier == identifier for view in self._instances()):
            title = f'No loaded model with the identifier "{identifier}".'
            raise _RpcFailure(_error(title, "generic.identifierNotFound"))
        try:
            self._state.unload(identifier, generation=self._generation)
        except NoSuchInstance:
            raise _RpcFailure(
                _error("Model is unloaded.", "generic.specificModelUnloaded")
            ) from None
        return False, None

    def _load_channel(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        endpoint, channel_id = message["endpoint"], message["channelId"]
        try:
            return serve_load_channel(
                endpoint,
                channel_id,
                message.get("creationParameter"),
                domain=_NAMESPACE_TYPES[self.namespace],
                state=self._state,
                generation=self._generation,
                model_info=_model_info,
                instance_info=self._instance_info,
                error=_error,
            )
        except BadCreation as exc:
            text = (
                f"Received invalid creationParameter for channelCreate, endpointName = "
                f"{endpoint}. Zod error: {exc}"
            )
            return self._warn(text, "channelCreationParameterTypeError")

    def _instance_info(self, identifier: str) -> dict[str, Any] | None:
        for view in self._instances():
            if view.identifier == identifier:
                return self._info(view)
        return None

    # -- instances -------------------------------------------------------------------

    def _instances(self) -> list[InstanceView]:
        everything = [
            InstanceView(model, identifier, config)
            for model, instances in self._state.models()
            for identifier, config in instances
        ]
        self._activity.prune({view.identifier for view in everything})
        wanted = _NAMESPACE_TYPES[self.namespace]
        return [view for view in everything if view.model.type == wanted]

    def _info(self, view: InstanceView) -> dict[str, Any]:
        """An LLMInstanceInfo (or EmbeddingModelInstanceInfo) for one loaded instance."""
        info = _model_info(view.model)
        info.update(
            {
                "identifier": view.identifier,
                "instanceReference": self._activity.reference(view.identifier),
                # The emulator's instances never expire on their own (see docs/emulator.md).
                "ttlMs": None,
                # null while the instance is in use, set when its work ends.
                "lastUsedTime": self._activity.last_used(view.identifier),
                "contextLength": view.config.get("context_length", view.model.max_context_length),
            }
        )
        return info

    def _find(self, given: bool, parameter: Any) -> InstanceView | None:
        """The instance a `{specifier, throwIfNotFound}` parameter names, or None."""
        if not given or not isinstance(parameter, dict):
            raise _BadParameter("expected an object {specifier, throwIfNotFound}")
        specifier, throw = parameter.get("specifier"), parameter.get("throwIfNotFound")
        if not isinstance(throw, bool):
            raise _BadParameter("throwIfNotFound: expected boolean")
        if not isinstance(specifier, dict):
            raise _BadParameter("specifier: expected object")
        throw = throw or self._switches.strict
        views = self._instances()
        if specifier.get("type") == "instanceReference":
            reference = specifier.get("instanceReference")
            if not isinstance(reference, str):
                raise _BadParameter("specifier.instanceReference: expected string")
            for view in views:
                if self._activity.reference(view.identifier) == reference:
                    return view
            if throw:
                raise _RpcFailure(_error("Model is unloaded.", "generic.specificModelUnloaded"))
            return None
        if specifier.get("type") != "query":
            raise _BadParameter("specifier.type: expected 'instanceReference' or 'query'")
        query = specifier.get("query")
        if not isinstance(query, dict) or not set(query) <= _QUERY_KEYS:
            raise _BadParameter(f"specifier.query: expected an object with keys {_QUERY_KEYS}")
        for view in views:
            if _matches(view, query):
                return view
        if throw:
            data = {
                "code": "generic.noModelMatchingQuery",
                "query": query,
                "loadedModelsSample": [v.identifier for v in views[:10]],
                "totalLoadedModels": len(views),
            }
            raise _RpcFailure(_error("No model found that fits the query.", data))
        return None


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_parameter(given: bool) -> None:
    if given:
        raise _BadParameter("this endpoint takes no parameter: omit 'parameter'")


def _model_info(model: CatalogModel) -> dict[str, Any]:
    """A ModelInfo (what listDownloadedModels lists; instance infos add to it)."""
    info: dict[str, Any] = {
        "type": model.type,
        "modelKey": model.key,
        "format": CHANNEL_FORMATS.get(model.format, "gguf"),
        "displayName": model.display_name or model.key,
        "publisher": model.publisher or "",
        "path": _path(model),
        "sizeBytes": model.size_bytes,
        "indexedModelIdentifier": _path(model),
        "deviceIdentifier": None,
        "maxContextLength": model.max_context_length,
    }
    if model.params_string is not None:
        info["paramsString"] = model.params_string
    if model.architecture is not None:
        info["architecture"] = model.architecture
    if model.quantization is not None:
        bits = model.bits_per_weight
        info["quantization"] = {"name": model.quantization, "bits": int(bits or 0)}
    if model.type == "llm":
        info["vision"] = model.vision
        info["trainedForToolUse"] = model.trained_for_tool_use
    return info


def _matches(view: InstanceView, query: dict[str, Any]) -> bool:
    # Exact matching: `key:2` is not `key` (lmstudio-real.md, "The channel in practice").
    identifier = query.get("identifier")
    if identifier is not None and identifier != view.identifier:
        return False
    if "domain" in query and query["domain"] != view.model.type:
        return False
    if "vision" in query and query["vision"] != view.model.vision:
        return False
    path = query.get("path")
    return path is None or path == _path(view.model)


def _path(model: CatalogModel) -> str:
    # Relative to the models folder: publisher/name (a key may already carry the publisher).
    return model.key if "/" in model.key else f"{model.publisher or 'local'}/{model.key}"


def _error(title: str, display: str | dict[str, Any]) -> dict[str, Any]:
    """LM Studio's serialized error object."""
    display_data = {"code": display} if isinstance(display, str) else display
    return {
        "title": title,
        "rootTitle": title,
        "displayData": display_data,
        "stack": f"Error: {title}\n    at lmkeeperd-emulator",
    }
