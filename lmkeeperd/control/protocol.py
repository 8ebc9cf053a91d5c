"""The control-socket protocol as pure functions: bytes in, request records out.

Theory of operation
-------------------
Each request is one JSON object on one line (at most `MAX_LINE` bytes, not counting the
newline) with an ``op`` field. `parse_request` turns one line into one of the frozen request
records below, or raises `ProtocolError` with a message that names what was wrong.

Errors come in two weights, matching interface.md:

* `FrameError` (a `ProtocolError`): the line itself is unusable (too long, not UTF-8, not
  JSON, not a JSON object). The server replies with the error and closes the connection,
  because a client that sends such frames is confused about the protocol.
* plain `ProtocolError`: a well-formed object that is not a valid request (unknown op,
  missing or mistyped field). The server replies with the error and keeps the connection.

Fields a request does not know are ignored, so that newer clients can send optional extras to
older daemons. ``null`` for an optional field means the same as leaving it out.

Nothing here does I/O, so it is tested synchronously (and with hypothesis).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from lmkeeperd.errors import FrameError as FrameError  # re-exported for the server
from lmkeeperd.errors import ProtocolError

MAX_LINE = 64 * 1024
"""Longest request line accepted, in bytes, without its newline."""

# Stream ids are counters; anything past a signed 64-bit integer is a client bug, and refusing
# it keeps absurd numbers (json accepts thousands of digits) out of the daemon.
MAX_STREAM_ID = 2**63 - 1

# How much of a client's bad value is echoed back in an error message.
_ECHO_LIMIT = 60


@dataclass(frozen=True, slots=True)
class Select:
    """Select `model` (the daemon trims it and ignores an empty key, lifecycle L1).

    `keep_alive`: an idle timeout in seconds for this selection only (0 never ejects);
    `"default"` (`default_idle`) drops an earlier selection's own timeout for
    `[model] idle_timeout`. Left out, a selection of the model already selected keeps it.
    """

    op: ClassVar[str] = "select"
    model: str
    keep_alive: float | None = None
    default_idle: bool = False


@dataclass(frozen=True, slots=True)
class Activity:
    """`model` (None: the current model) was just used: restart its idle timer (L10, L24)."""

    op: ClassVar[str] = "activity"
    model: str | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A client starts streaming from `model` (None: the current model) (L7-L9, L24).

    The reply carries the stream id.
    """

    op: ClassVar[str] = "stream_start"
    model: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """End stream `stream`, or the newest stream this connection opened when None."""

    op: ClassVar[str] = "stream_end"
    stream: int | None = None


@dataclass(frozen=True, slots=True)
class Engine:
    """The user's engine changed; anything but "lmstudio" makes lmkeeperd hands-off (L13)."""

    op: ClassVar[str] = "engine"
    name: str


@dataclass(frozen=True, slots=True)
class Unload:
    """Unload the current model now, or the named one (even if lmkeeperd did not load it)."""

    op: ClassVar[str] = "unload"
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """Ask for the status object."""

    op: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class Models:
    """Ask for the server's models, who loaded each instance and whether each fits."""

    op: ClassVar[str] = "models"


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Turn this connection into an event stream (handled by the server itself)."""

    op: ClassVar[str] = "subscribe"


Request: TypeAlias = (
    Select | Activity | StreamStart | StreamEnd | Engine | Unload | Status | Models | Subscribe
)

OPS: tuple[str, ...] = tuple(
    sorted(
        cls.op
        for cls in (
            Select,
            Activity,
            StreamStart,
            StreamEnd,
            Engine,
            Unload,
            Status,
            Models,
            Subscribe,
        )
    )
)


def parse_request(line: bytes) -> Request:
    """Parse one request line (a trailing newline is allowed) into a request record.

    Raises `FrameError` when the connection should be closed after the error reply, and
    `ProtocolError` when only this request is wrong.
    """
    body = line[:-1] if line.endswith(b"\n") else line
    if body.endswith(b"\r"):
        body = body[:-1]
    if len(body) > MAX_LINE:
        raise FrameError(line_too_long_message())
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FrameError(f"request is not UTF-8: byte {e.start} is invalid") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise FrameError("invalid JSON: nested too deeply") from None
    except ValueError as e:
        # JSONDecodeError, and also int literals beyond Python's digit limit.
        raise FrameError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"expected a JSON object, got {_json_type(obj)}")
    return _request_from_object(obj)


def line_too_long_message() -> str:
    return f"line too long (limit {MAX_LINE} bytes)"


def as_message(request: Request) -> dict[str, Any]:
    """The JSON object a client sends for `request` (inverse of `parse_request`)."""
    message: dict[str, Any] = {"op": request.op}
    match request:
        case Select(model=model, keep_alive=keep_alive, default_idle=default_idle):
            message["model"] = model
            if keep_alive is not None:
                message["keep_alive"] = keep_alive
            elif default_idle:
                message["keep_alive"] = "default"
        case Engine(name=name):
            message["name"] = name
        case StreamEnd(stream=stream) if stream is not None:
            message["stream"] = stream
        case Unload(model=model) | Activity(model=model) | StreamStart(model=model) if (
            model is not None
        ):
            message["model"] = model
        case _:
            pass
    return message


def encode(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON line, newline included.

    Raises ValueError or TypeError when `obj` is not plain JSON (NaN and infinities included:
    other languages' JSON parsers reject them).
    """
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")


def _request_from_object(obj: dict[str, Any]) -> Request:
    if "op" not in obj:
        raise ProtocolError(f'missing field "op"; expected one of {", ".join(OPS)}')
    op = obj["op"]
    if not isinstance(op, str):
        raise ProtocolError(f'"op" must be a string, got {_json_type(op)}')
    match op:
        case "select":
            default_idle = obj.get("keep_alive") == "default"
            return Select(
                model=_required_str(obj, op, "model"),
                keep_alive=None if default_idle else _optional_seconds(obj, op, "keep_alive"),
                default_idle=default_idle,
            )
        case "activity":
            return Activity(model=_optional_model(obj, op))
        case "stream_start":
            return StreamStart(model=_optional_model(obj, op))
        case "stream_end":
            return StreamEnd(stream=_optional_stream_id(obj, op, "stream"))
        case "engine":
            return Engine(name=_required_str(obj, op, "name"))
        case "unload":
            return Unload(model=_optional_str(obj, op, "model"))
        case "status":
            return Status()
        case "models":
            return Models()
        case "subscribe":
            return Subscribe()
        case _:
            raise ProtocolError(f"unknown op {_echo(op)}; expected one of {', '.join(OPS)}")


def _required_str(obj: dict[str, Any], op: str, field: str) -> str:
    if field not in obj:
        raise ProtocolError(f'{op}: missing field "{field}"')
    return _str_value(obj[field], op, field)


def _optional_str(obj: dict[str, Any], op: str, field: str) -> str | None:
    value = obj.get(field)
    return None if value is None else _str_value(value, op, field)


def _optional_model(obj: dict[str, Any], op: str) -> str | None:
    """L24: the model a use names (trimmed); left out or null means the current model."""
    value = obj.get("model")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(
            f'{op}: "model" must be a model key (a string), got {_json_type(value)}; '
            "leave it out for the current model"
        )
    key = value.strip()
    if not key:
        raise ProtocolError(f'{op}: "model" is empty; leave it out for the current model')
    return key


def _str_value(value: object, op: str, field: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f'{op}: "{field}" must be a string, got {_json_type(value)}')
    return value


# As the config's durations: at most 30 days (lmkeeperd/config/types.py MAX_DURATION_S).
MAX_KEEP_ALIVE_S = 30 * 24 * 3600.0


def _optional_seconds(obj: dict[str, Any], op: str, field: str) -> float | None:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        also = ' or "default"' if field == "keep_alive" else ""
        raise ProtocolError(
            f'{op}: "{field}" must be a number of seconds{also}, got {_json_type(value)}'
        )
    if not 0 <= value <= MAX_KEEP_ALIVE_S:  # NaN fails this too
        raise ProtocolError(
            f'{op}: "{field}" must be between 0 and {MAX_KEEP_ALIVE_S:.0f} seconds, got {value}'
        )
    return float(value)


def _optional_stream_id(obj: dict[str, Any], op: str, field: str) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    # bool is an int subclass in Python, but `true` is not a stream id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(
            f'{op}: "{field}" must be a non-negative integer, got {_json_type(value)}'
        )
    if not 0 <= value <= MAX_STREAM_ID:
        raise ProtocolError(f'{op}: "{field}" must be a non-negative integer up to {MAX_STREAM_ID}')
    return value


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, as a client author would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _echo(value: str) -> str:
    """`value` quoted for an error message, escaped and cut short (it is client data)."""
    if len(value) > _ECHO_LIMIT:
        value = value[:_ECHO_LIMIT] + "..."
    return json.dumps(value)
