"""What every endpoint of the emulator's handler uses: the request in hand, JSON answers, errors.

`HandlerBase` is the root of the handler's classes: native_api.py and openai_api.py
add the endpoints, handler.py the routing around them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from lmkeeperd.emulator import auth, payloads
from lmkeeperd.emulator.ports import EmulatorPort
from lmkeeperd.emulator.request_log import LogEntry
from lmkeeperd.emulator.settings import Settings
from lmkeeperd.emulator.state import EmulatorState


@dataclass(slots=True)
class Request:
    method: str
    path: str
    json: Any
    json_ok: bool
    settings: Settings
    generation: int
    entry: LogEntry
    # The loaded instance an inference request uses, released when the request ends.
    instance: str | None = None


class HandlerBase(BaseHTTPRequestHandler):
    @property
    def emulator(self) -> EmulatorPort:
        emulator: EmulatorPort = getattr(self.server, "emulator")  # noqa: B009
        return emulator

    @property
    def state(self) -> EmulatorState:
        return self.emulator._state

    def _send_json(
        self,
        status: int,
        payload: Any,
        entry: LogEntry | None = None,
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

    def _reply(self, request: Request, payload: Any, status: int = 200) -> None:
        self._send_json(status, payload, request.entry)

    def _error(
        self,
        request: Request,
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

    def _unexpected(self, request: Request) -> None:
        # LM Studio's own answer, status and all: a 200 (lmstudio-real.md).
        message = f"Unexpected endpoint or method. ({request.method} {request.path})"
        self._send_json(200, {"error": message}, request.entry)

    def _refuse(self, request: Request, missing: bool) -> None:
        body = auth.refusal_body(missing, request.settings.error_style)
        headers = (("WWW-Authenticate", "Bearer"),)
        self._send_json(auth.REFUSAL_STATUS, body, request.entry, headers)

    def _object_body(self, request: Request) -> dict[str, Any] | None:
        """The JSON object body, or None after answering 400."""
        if not request.json_ok:
            self._error(request, 400, "the request body is not valid JSON", "invalid_request")
            return None
        if not isinstance(request.json, dict):
            self._error(request, 400, "the request body must be a JSON object", "invalid_request")
            return None
        return request.json

    def _required_string(self, request: Request, body: dict[str, Any], name: str) -> str | None:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            message = f"'{name}' is required and must be a non-empty string"
            self._error(request, 400, message, "invalid_request", "missing_" + name)
            return None
        return value
