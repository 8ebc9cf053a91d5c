"""LM Studio's native REST endpoints: `/api/v1/models` (list, load, unload) and `/api/v0/models`."""

from __future__ import annotations

from typing import Any

from lmkeeperd.emulator import payloads
from lmkeeperd.emulator.errors import InjectedLoadFailure, NoSuchInstance, NoSuchModel
from lmkeeperd.emulator.http_base import HandlerBase, Request
from lmkeeperd.emulator.load_config import LOAD_KEYS, LOAD_OPTIONS


class NativeEndpoints(HandlerBase):
    def _list_v1(self, request: Request) -> None:
        models = [payloads.v1_model(model, instances) for model, instances in self.state.models()]
        self._reply(request, {"models": models})

    def _load(self, request: Request) -> None:
        body = self._object_body(request)
        if body is None:
            return
        key = self._required_string(request, body, "model")
        if key is None:
            return
        unknown = [name for name in body if name not in LOAD_KEYS]
        if unknown:
            # As 0.4.23 does (lmstudio-real.md); the wording is the zod validator's.
            listed = ", ".join(f"'{name}'" for name in unknown)
            message = f"Unrecognized key(s) in object: {listed}"
            self._error(request, 400, message, "invalid_request", "unrecognized_keys")
            return
        echo = body.get("echo_load_config", False)
        if not isinstance(echo, bool):
            message = "'echo_load_config' must be a boolean"
            self._error(request, 400, message, "invalid_request")
            return
        options = {name: body[name] for name in LOAD_OPTIONS if name in body}
        try:
            done = self.state.load(key, options, generation=request.generation)
        except NoSuchModel as exc:
            self._error(request, 404, str(exc), "invalid_request", "model_not_found")
            return
        except ValueError as exc:
            self._error(request, 400, str(exc), "invalid_request")
            return
        except InjectedLoadFailure as exc:
            self._error(request, exc.status, str(exc), "server_error", "model_load_failed")
            return
        id_field = "model_instance_id" if request.settings.legacy_load_answer else "instance_id"
        answer: dict[str, Any] = {
            "type": done.model.type,
            id_field: done.instance_id,
            "load_time_seconds": round(done.seconds, 3),
            "status": "loaded",
        }
        if echo:
            answer["load_config"] = dict(done.echo_config)
        self._reply(request, answer)

    def _unload(self, request: Request) -> None:
        body = self._object_body(request)
        if body is None:
            return
        instance_id = self._required_string(request, body, "instance_id")
        if instance_id is None:
            return
        try:
            self.state.unload(instance_id, generation=request.generation)
        except NoSuchInstance as exc:
            self._error(request, 404, str(exc), "invalid_request", "instance_not_found")
            return
        self._reply(request, {"instance_id": instance_id})

    def _list_v0(self, request: Request) -> None:
        data = [payloads.v0_model(model, instances) for model, instances in self.state.models()]
        self._reply(request, {"object": "list", "data": data})

    def _show_v0(self, request: Request) -> None:
        wanted = request.path[len("/api/v0/models/") :]
        for model, instances in self.state.models():
            if model.key == wanted:
                self._reply(request, payloads.v0_model(model, instances))
                return
        self._error(request, 404, f"model '{wanted}' not found", "invalid_request", "not_found")
