"""The `/_emulator/` control API: the Python controls, over HTTP.

For when the emulator runs as its own process (benchmarks, `lmkeeperd demo`).
Control requests never need the bearer token and are not in the request log.
Their errors are always `{"error": "<message>"}`: this API is ours, not LM Studio's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lmkeeperd.emulator.errors import NoSuchInstance, NoSuchModel
from lmkeeperd.emulator.ports import EmulatorPort as Emulator

CONTROL_PREFIX = "/_emulator/"


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    status: int
    payload: Mapping[str, Any]
    # go_down answers on a connection that is the last one left open: close it after.
    close: bool = False


@dataclass(frozen=True, slots=True)
class ControlRequest:
    method: str
    name: str
    query: Mapping[str, str]
    body: Any
    connection: socket.socket | None = field(default=None, repr=False)


class _BadRequest(ValueError):
    pass


_OK: Mapping[str, Any] = {"ok": True}


def handle_control(emulator: Emulator, request: ControlRequest) -> ControlAnswer:
    handlers = _GET if request.method == "GET" else _POST if request.method == "POST" else {}
    handler = handlers.get(request.name)
    if handler is None:
        known = sorted(f"GET {n}" for n in _GET) + sorted(f"POST {n}" for n in _POST)
        message = f"no control endpoint {request.method} {CONTROL_PREFIX}{request.name}"
        return ControlAnswer(404, {"error": message, "endpoints": known})
    if (
        request.method == "POST"
        and request.body is not None
        and not isinstance(request.body, Mapping)
    ):
        return ControlAnswer(400, {"error": "the body must be a JSON object"})
    try:
        return handler(emulator, request)
    except (_BadRequest, ValueError) as exc:
        return ControlAnswer(400, {"error": str(exc)})
    except (NoSuchModel, NoSuchInstance) as exc:
        return ControlAnswer(404, {"error": str(exc)})
    except RuntimeError as exc:
        # e.g. go_down while the Python side has just taken the server down or stopped it.
        return ControlAnswer(409, {"error": str(exc)})


def _body(request: ControlRequest) -> Mapping[str, Any]:
    return request.body if isinstance(request.body, Mapping) else {}


def _number(body: Mapping[str, Any], name: str, default: float | None = None) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _BadRequest(f"'{name}' must be a number >= 0")
    return float(value)


def _flag(body: Mapping[str, Any], name: str, default: bool | None = None) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _BadRequest(f"'{name}' must be true or false")
    return value


def _string(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"'{name}' must be a non-empty string")
    return value


def _integer(body: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(f"'{name}' must be an integer")
    return value


def _load_delay(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    body = _body(request)
    emu.set_load_delay(_number(body, "seconds"), _string(body, "model", optional=True))
    return ControlAnswer(200, _OK)


def _fail_next_loads(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    body = _body(request)
    message = body.get("message")
    if message is None:
        emu.fail_next_loads(_integer(body, "n"), status=_integer(body, "status", 500))
    elif isinstance(message, str):
        emu.fail_next_loads(_integer(body, "n"), message, status=_integer(body, "status", 500))
    else:
        raise _BadRequest("'message' must be a string")
    return ControlAnswer(200, _OK)


def _guardrail(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    body = _body(request)
    unknown = sorted(set(body) - {"memory_gb", "max_models"})
    if unknown:
        raise _BadRequest(f"unknown key(s) {unknown}: give 'memory_gb' and/or 'max_models'")
    memory_gb = None if body.get("memory_gb") is None else _number(body, "memory_gb")
    max_models = None if body.get("max_models") is None else _integer(body, "max_models")
    emu.set_guardrail(memory_gb=memory_gb, max_models=max_models)
    return ControlAnswer(200, _OK)


def _hang_unloads(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    emu.hang_unloads(_flag(_body(request), "on"))
    return ControlAnswer(200, _OK)


def _go_down(
    emu: Emulator, request: ControlRequest, default_seconds: float | None
) -> ControlAnswer:
    body = _body(request)
    if "seconds" not in body and default_seconds is None:
        raise _BadRequest(
            "'seconds' is required: nobody could ask a server that is down to come back"
        )
    seconds = _number(body, "seconds", default_seconds)
    forget = _flag(body, "forget", True)
    emu.go_down_for(seconds, forget=forget, keep=request.connection)
    return ControlAnswer(200, {"ok": True, "down_for": seconds, "forget": forget}, close=True)


def _load_behind(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    body = _body(request)
    key = _string(body, "key")
    assert key is not None
    config = body.get("config")
    if config is not None and not isinstance(config, Mapping):
        raise _BadRequest("'config' must be an object")
    return ControlAnswer(200, {"instance_id": emu.load_behind(key, config)})


def _unload_behind(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    instance_id = _string(_body(request), "instance_id")
    assert instance_id is not None
    emu.unload_behind(instance_id)
    return ControlAnswer(200, {"instance_id": instance_id})


def _requests(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    since = request.query.get("since")
    try:
        after = float(since) if since is not None else None
    except ValueError:
        raise _BadRequest("'since' must be a number (a monotonic timestamp)") from None
    records = [asdict(record) for record in emu.requests() if after is None or record.t > after]
    return ControlAnswer(200, {"requests": records})


def _clear_requests(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    emu.clear_requests()
    return ControlAnswer(200, _OK)


def _token(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    body = _body(request)
    if "token" not in body:
        raise _BadRequest("'token' is required (a string, or null to turn auth off)")
    emu.set_token(_string(body, "token", optional=True))
    return ControlAnswer(200, _OK)


def _switch(setter: Callable[[Emulator, bool], None]) -> _Handler:
    def handle(emu: Emulator, request: ControlRequest) -> ControlAnswer:
        setter(emu, _flag(_body(request), "on"))
        return ControlAnswer(200, _OK)

    return handle


def _stream(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    body = _body(request)
    current = emu.state()
    interval = _number(body, "interval", current["stream_interval"])
    chunks = _integer(body, "chunks", current["stream_chunks"])
    emu.set_stream(interval, chunks)
    return ControlAnswer(200, _OK)


def _advance_clock(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    emu.advance_clock(_number(_body(request), "seconds"))
    return ControlAnswer(200, _OK)


def _error_style(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    style = _string(_body(request), "style")
    assert style is not None
    emu.set_error_style(style)
    return ControlAnswer(200, _OK)


def _seconds(setter: Callable[[Emulator, float], None]) -> _Handler:
    def handle(emu: Emulator, request: ControlRequest) -> ControlAnswer:
        setter(emu, _number(_body(request), "seconds"))
        return ControlAnswer(200, _OK)

    return handle


def _clear_frames(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    emu.clear_frames()
    return ControlAnswer(200, _OK)


def _frames(emu: Emulator, request: ControlRequest) -> ControlAnswer:
    return ControlAnswer(200, {"frames": [asdict(frame) for frame in emu.frames()]})


_Handler = Callable[[Emulator, ControlRequest], ControlAnswer]

_GET: dict[str, _Handler] = {
    "loaded": lambda emu, _: ControlAnswer(200, {"loaded": emu.loaded()}),
    "instances": lambda emu, _: ControlAnswer(200, {"instances": emu.instance_info()}),
    "requests": _requests,
    "frames": _frames,
    "state": lambda emu, _: ControlAnswer(200, {**emu.state(), "loaded": emu.loaded()}),
}

_POST: dict[str, _Handler] = {
    "load_delay": _load_delay,
    "fail_next_loads": _fail_next_loads,
    "hang_unloads": _hang_unloads,
    "guardrail": _guardrail,
    "go_down": lambda emu, request: _go_down(emu, request, None),
    "restart": lambda emu, request: _go_down(emu, request, 0.0),
    "load_behind": _load_behind,
    "unload_behind": _unload_behind,
    "clear_requests": _clear_requests,
    "token": _token,
    "v0_only": _switch(lambda emu, on: emu.set_v0_only(on)),
    "jit": _switch(lambda emu, on: emu.set_jit(on)),
    "auto_evict": _switch(lambda emu, on: emu.set_auto_evict(on)),
    "legacy_load_answer": _switch(lambda emu, on: emu.set_legacy_load_answer(on)),
    "advance_clock": _advance_clock,
    "stream": _stream,
    "error_style": _error_style,
    # The websocket channel's fault switches (docs/emulator.md, "The websocket channel").
    "channel": _switch(lambda emu, on: emu.set_channel(on)),
    "channel_auth_refused": _switch(lambda emu, on: emu.refuse_channel_auth(on)),
    "channel_rpc_missing": _switch(lambda emu, on: emu.set_channel_rpc_missing(on)),
    "channel_strict": _switch(lambda emu, on: emu.set_channel_strict(on)),
    "channel_delay": _seconds(lambda emu, seconds: emu.set_channel_delay(seconds)),
    "channel_auth_timeout": _seconds(lambda emu, seconds: emu.set_channel_auth_timeout(seconds)),
    "clear_frames": _clear_frames,
}
