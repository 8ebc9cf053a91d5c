"""HTTP request handling: one request's way from the socket to its endpoint.

One handler instance serves one connection (HTTP/1.1 keep-alive) on its own
thread. Every non-streamed answer carries Content-Length; streamed answers
use chunked transfer encoding, so the connection stays reusable after them.

Here: reading the body (body.py), control requests (control.py), websocket
upgrades (ws.py), auth, the request log and routing. The endpoints are in
native_api.py (`/api/v1`, `/api/v0`) and openai_api.py (`/v1`), the answers
they share in http_base.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from lmkeeperd.emulator import auth
from lmkeeperd.emulator.body import MAX_BODY_BYTES, BodyError, parse_json, read_body
from lmkeeperd.emulator.control import CONTROL_PREFIX, ControlRequest, handle_control
from lmkeeperd.emulator.errors import Interrupted
from lmkeeperd.emulator.http_base import Request
from lmkeeperd.emulator.native_api import NativeEndpoints
from lmkeeperd.emulator.openai_api import OpenAIEndpoints
from lmkeeperd.emulator.ws import serve_channel

__all__ = ["CLIENT_GONE", "MAX_BODY_BYTES", "EmulatorRequestHandler"]

# A peer that vanished mid-answer; never worth a traceback.
CLIENT_GONE = (ConnectionError, TimeoutError)


class EmulatorRequestHandler(NativeEndpoints, OpenAIEndpoints):
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
        body_error: BodyError | None = None
        try:
            raw = read_body(self.headers, self.rfile)
        except BodyError as exc:
            raw, body_error = b"", exc
        parsed, json_ok = parse_json(raw)
        if split.path.startswith(CONTROL_PREFIX):
            if body_error is not None:
                self.close_connection = True
                self._send_json(body_error.status, {"error": str(body_error)})
            else:
                self._serve_control(method, split.path, split.query, parsed, json_ok)
            return
        # The generation first, then the phase: a server that goes down sets its phase
        # before it bumps the generation, so a request the listener accepted while it was
        # closing is dropped here, and one that started before is interrupted later. A
        # load accepted by a dying server never lands after its restart.
        generation = self.state.generation()
        if self.emulator.phase != "up":
            self.close_connection = True  # no answer, nothing recorded: never served
            return
        settings = self.state.settings()
        authorized = auth.refused(self.headers.get("Authorization"), settings.token)
        entry = self.state.record(arrived, method, self.path, parsed, authorized is None)
        request = Request(method, split.path, parsed, json_ok, settings, generation, entry)
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

    def _route(self, request: Request) -> None:
        if request.settings.v0_only and request.path.startswith("/api/v1/"):
            self._unexpected(request)
            return
        name = self._ROUTES.get((request.method, request.path))
        if name is None and request.method == "GET" and request.path.startswith("/api/v0/models/"):
            name = "_show_v0"
        if name is None:
            self._unexpected(request)
            return
        route: Callable[[Request], None] = getattr(self, name)
        route(request)

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
