"""HTTP request handling: LM Studio's endpoints, auth, the request log, streaming.

One handler instance serves one connection (HTTP/1.1 keep-alive) on its own
thread. Every non-streamed answer carries Content-Length; streamed answers
use chunked transfer encoding, so the connection stays reusable after them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from lmkeeperd.emulator import auth, payloads
from lmkeeperd.emulator.control import CONTROL_PREFIX, ControlRequest, handle_control
from lmkeeperd.emulator.state import (
    LOAD_KEYS,
    LOAD_OPTIONS,
    EmulatorState,
    InjectedLoadFailure,
    Interrupted,
    NoSuchInstance,
    NoSuchModel,
    Settings,
    _LogEntry,
)
from lmkeeperd.emulator.ws import serve_channel

if TYPE_CHECKING:
    from lmkeeperd.emulator.server import Emulator

MAX_BODY_BYTES = 16 * 1024 * 1024

# A peer that vanished mid-answer; never worth a traceback.
CLIENT_GONE = (ConnectionError, TimeoutError)


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    json: Any
    json_ok: bool
    settings: Settings
    generation: int
    entry: _LogEntry
    # The loaded instance an inference request uses, released when the request ends.
    instance: str | None = None


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lmkeeperd-emulator/0.1"
    sys_version = ""
    # Idle keep-alive connections are dropped after this long.
    timeout = 300

    _ROUTES: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", "/api/v1/models"): "_list_v1",
        ("POST", "/api/v1/models/load"): "_load",
        ("POST", "/api/v1/models/unload"): "_unload",
        ("GET", "/api/v0/models"): "_list_v0",
        ("GET", "/v1/models"): "_list_openai",
        ("POST", "/v1/chat/completions"): "_chat_completions",
        ("POST", "/v1/completions"): "_completions",
        ("POST", "/v1/embeddings"): "_embeddings",
    }

    # -- plumbing ------------------------------------------------------------------

    @property
    def emulator(self) -> Emulator:
        emulator: Emulator = getattr(self.server, "emulator")  # noqa: B009
        return emulator

    @property
    def state(self) -> EmulatorState:
        return self.emulator._state

    def log_message(self, format: str, *args: Any) -> None:
        if self.emulator.verbose:
            sys.stderr.write(f"emulator: {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        if serve_channel(self):  # websocket upgrades and the SDK greeting (ws.py)
            return
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        arrived = time.monotonic()
        split = urlsplit(self.path)
        body_error: _BodyError | None = None
        try:
            raw = self._read_body()
        except _BodyError as exc:
            raw, body_error = b"", exc
        parsed, json_ok = _parse_json(raw)
        if split.path.startswith(CONTROL_PREFIX):
            if body_error is not None:
                self.close_connection = True
                self._send_json(body_error.status, {"error": str(body_error)})
            else:
                self._serve_control(method, split.path, split.query, parsed, json_ok)
            return
        settings = self.state.settings()
        authorized = auth.refused(self.headers.get("Authorization"), settings.token)
        entry = self.state.record(arrived, method, self.path, parsed, authorized is None)
        request = _Request(
            method, split.path, parsed, json_ok, settings, self.state.generation(), entry
        )
        try:
            if body_error is not None:
                self.close_connection = True
                self._error(request, body_error.status, str(body_error), "invalid_request")
            elif authorized is not None:
                self._refuse(request, authorized)
            else:
                self._route(request)
        except Interrupted:
            # The server "died" mid-request: no answer, like a crashed process.
            self.close_connection = True
        except CLIENT_GONE:
            self.close_connection = True
        finally:
            if request.instance is not None:
                self.state.release(request.instance)
            self.state.record_done(entry)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BodyError(400, "invalid Content-Length header") from None
        if length < 0:
            raise _BodyError(400, "invalid Content-Length header")
        if length > MAX_BODY_BYTES:
            raise _BodyError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send_json(
        self,
        status: int,
        payload: Any,
        entry: _LogEntry | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        data = json.dumps(payload).encode("utf-8")
        if entry is not None:
            # Logged before the first byte leaves: whoever holds the answer sees it logged.
            self.state.record_status(entry, status)
            self.state.record_done(entry)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _reply(self, request: _Request, payload: Any, status: int = 200) -> None:
        self._send_json(status, payload, request.entry)

    def _error(
        self,
        request: _Request,
        status: int,
        message: str,
        error_type: str,
        code: str | None = None,
    ) -> None:
        body = payloads.error_body(
            message, request.settings.error_style, error_type=error_type, code=code
        )
        headers = (("WWW-Authenticate", "Bearer"),) if status == 401 else ()
        self._send_json(status, body, request.entry, headers)

    def _unexpected(self, request: _Request) -> None:
        # LM Studio's own answer, status and all: a 200 (lmstudio-real.md).
        message = f"Unexpected endpoint or method. ({request.method} {request.path})"
        self._send_json(200, {"error": message}, request.entry)

    def _refuse(self, request: _Request, missing: bool) -> None:
        body = auth.refusal_body(missing, request.settings.error_style)
        headers = (("WWW-Authenticate", "Bearer"),)
        self._send_json(auth.REFUSAL_STATUS, body, request.entry, headers)

    def _route(self, request: _Request) -> None:
        if request.settings.v0_only and request.path.startswith("/api/v1/"):
            self._unexpected(request)
            return
        name = self._ROUTES.get((request.method, request.path))
        if name is None and request.method == "GET" and request.path.startswith("/api/v0/models/"):
            name = "_show_v0"
        if name is None:
            self._unexpected(request)
            return
        route: Callable[[_Request], None] = getattr(self, name)
        route(request)

    def _object_body(self, request: _Request) -> dict[str, Any] | None:
        """The JSON object body, or None after answering 400."""
        if not request.json_ok:
            self._error(request, 400, "the request body is not valid JSON", "invalid_request")
            return None
        if not isinstance(request.json, dict):
            self._error(request, 400, "the request body must be a JSON object", "invalid_request")
            return None
        return request.json

    def _required_string(self, request: _Request, body: dict[str, Any], name: str) -> str | None:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            message = f"'{name}' is required and must be a non-empty string"
            self._error(request, 400, message, "invalid_request", "missing_" + name)
            return None
        return value

    # -- control -------------------------------------------------------------------

    def _serve_control(
        self, method: str, path: str, query: str, parsed: Any, json_ok: bool
    ) -> None:
        if not json_ok:
            self._send_json(400, {"error": "the request body is not valid JSON"})
            return
        request = ControlRequest(
            method,
            path[len(CONTROL_PREFIX) :],
            dict(parse_qsl(query)),
            parsed,
            self.connection,
        )
        answer = handle_control(self.emulator, request)
        if answer.close:
            self.close_connection = True
        self._send_json(answer.status, answer.payload)

    # -- LM Studio's native API ----------------------------------------------------

    def _list_v1(self, request: _Request) -> None:
        models = [payloads.v1_model(model, instances) for model, instances in self.state.models()]
        self._reply(request, {"models": models})

    def _load(self, request: _Request) -> None:
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

    def _unload(self, request: _Request) -> None:
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

    def _list_v0(self, request: _Request) -> None:
        data = [payloads.v0_model(model, instances) for model, instances in self.state.models()]
        self._reply(request, {"object": "list", "data": data})

    def _show_v0(self, request: _Request) -> None:
        wanted = request.path[len("/api/v0/models/") :]
        for model, instances in self.state.models():
            if model.key == wanted:
                self._reply(request, payloads.v0_model(model, instances))
                return
        self._error(request, 404, f"model '{wanted}' not found", "invalid_request", "not_found")

    # -- OpenAI-compatible endpoints -----------------------------------------------

    def _list_openai(self, request: _Request) -> None:
        # LM Studio lists every downloaded model when JIT loading is on, else only loaded ones.
        listed = self.state.inference_ids(include_unloaded=request.settings.jit)
        data = [payloads.openai_model(model_id, model) for model_id, model in listed]
        self._reply(request, {"object": "list", "data": data})

    def _chat_completions(self, request: _Request) -> None:
        self._complete(request, chat=True)

    def _completions(self, request: _Request) -> None:
        self._complete(request, chat=False)

    def _ready_model(self, request: _Request, body: dict[str, Any], kind: str) -> str | None:
        """The named model, JIT-loaded if need be; None after answering an error."""
        name = self._required_string(request, body, "model")
        if name is None:
            return None
        ttl = body.get("ttl")
        if ttl is not None and (not payloads.is_number(ttl) or ttl <= 0):
            self._error(
                request, 400, "'ttl' must be a positive number of seconds", "invalid_request"
            )
            return None
        try:
            model, request.instance = self.state.claim_for_inference(name)
        except NoSuchModel as exc:
            self._error(request, 404, str(exc), "invalid_request", "model_not_found")
            return None
        if (model.type == "embedding") != (kind == "embedding"):
            message = f"model '{name}' is a {model.type} model and cannot serve {kind} requests"
            self._error(request, 400, message, "invalid_request", "wrong_model_type")
            return None
        if request.instance is not None:
            return name
        if not request.settings.jit:
            message = (
                f"model '{name}' is not loaded, and just-in-time loading is off. "
                "Load it first (lms load, or POST /api/v1/models/load)."
            )
            self._error(request, 404, message, "invalid_request", "model_not_loaded")
            return None
        try:
            done = self.state.load(model.key, {}, generation=request.generation, jit=True, ttl=ttl)
            request.instance = done.instance_id
        except InjectedLoadFailure as exc:
            self._error(request, exc.status, str(exc), "server_error", "model_load_failed")
            return None
        return name

    def _complete(self, request: _Request, *, chat: bool) -> None:
        body = self._object_body(request)
        if body is None:
            return
        field = "messages" if chat else "prompt"
        value = body.get(field)
        valid = isinstance(value, list) if chat else isinstance(value, str | list)
        if not valid:
            kind = "a list of messages" if chat else "a string"
            self._error(request, 400, f"'{field}' is required: {kind}", "invalid_request")
            return
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            self._error(request, 400, "'stream' must be a boolean", "invalid_request")
            return
        name = self._ready_model(request, body, "completion")
        if name is None:
            return
        completion = payloads.Completion(
            name,
            chat=chat,
            chunks=request.settings.stream_chunks,
            prompt_tokens=payloads.count_prompt_tokens(body),
        )
        # What the websocket channel reports for the instance (activity.py).
        with self.emulator._serving(name, "completion") as served:
            served.generating()
            if stream:
                self._stream(request, completion)
            else:
                self._reply(request, completion.whole())

    def _stream(self, request: _Request, completion: payloads.Completion) -> None:
        self.state.record_status(request.entry, 200)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index in range(len(completion.pieces)):
            if index:
                self.state.wait(request.settings.stream_interval, request.generation)
            event = json.dumps(completion.chunk(index))
            self._write_chunk(f"data: {event}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self.state.record_done(request.entry)
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        # wfile is unbuffered: each event leaves in its own write, nothing is held back.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _embeddings(self, request: _Request) -> None:
        body = self._object_body(request)
        if body is None:
            return
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            message = "'input' is required: a string or a list of strings"
            self._error(request, 400, message, "invalid_request")
            return
        name = self._ready_model(request, body, "embedding")
        if name is not None:
            with self.emulator._serving(name, "embedding"):
                self._reply(request, payloads.embeddings(name, inputs))


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    if not raw.strip():
        return None, True
    try:
        return json.loads(raw), True
    except (ValueError, UnicodeDecodeError):
        return None, False
