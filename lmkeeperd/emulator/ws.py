"""LM Studio's websocket channel (`/llm`, `/embedding`, `/system`) on the REST port.

Why websockets' sans-IO `ServerProtocol` rather than our own framing: the
emulator's server is the stdlib's threaded http.server, which has already parsed
the upgrade request when a handler sees it; `ServerProtocol.accept()` takes that
parsed request, and then does the RFC 6455 parts that are easy to get subtly
wrong (masking, fragmentation, control frames, the close handshake, UTF-8 and
size checks) without any event loop. We only move bytes between it and the
handler's socket, on the handler's own thread: one thread per channel
connection, like every other emulator connection, so going down cuts it too.

The protocol on top (auth frame, envelopes, endpoints) is in rpc.py and
documented in docs/emulator.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import selectors
import time
from typing import Any
from urllib.parse import urlsplit

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from lmkeeperd.emulator.channel_switches import DEFAULT_AUTH_TIMEOUT, ChannelSwitches, FrameRecord
from lmkeeperd.emulator.errors import Interrupted
from lmkeeperd.emulator.ports import ChannelHandler
from lmkeeperd.emulator.rpc import Dispatcher

__all__ = ["DEFAULT_AUTH_TIMEOUT", "ChannelSwitches", "FrameRecord", "serve_channel"]

NAMESPACES = ("/llm", "/embedding", "/system")
MAX_FRAME_BYTES = 1024 * 1024
# The SDKs' token shape; the emulator's token must have it for a channel client to match.
TOKEN_PATTERN = re.compile(r"^sk-lm-([a-zA-Z0-9]{8}):([a-zA-Z0-9]{20})$")
_MAX_CREDENTIAL = 256
_READ_SIZE = 65536
# websockets logs every frame at DEBUG, auth frames (passkeys) included: never ours.
_WIRE_LOG = logging.getLogger("lmkeeperd.emulator.ws.wire")
_WIRE_LOG.setLevel(logging.WARNING)


def serve_channel(handler: ChannelHandler) -> bool:
    """Serve a GET if it is the SDK greeting or a websocket upgrade; False otherwise."""
    path = urlsplit(handler.path).path
    state = handler.state
    if path == "/lmstudio-greeting":
        entry = state.record(time.monotonic(), "GET", handler.path, None, True)
        handler._send_json(200, {"lmstudio": True}, entry)
        return True
    if handler.headers.get("Upgrade", "").lower() != "websocket":
        return False
    switches = handler.emulator._channel
    entry = state.record(time.monotonic(), "GET", handler.path, None, True)
    if not switches.enabled or path not in NAMESPACES:
        # What a server without the channel does with any unknown GET (lmstudio-real.md).
        handler.close_connection = True
        body = {"error": f"Unexpected endpoint or method. (GET {path})"}
        handler._send_json(200, body, entry)
        return True
    protocol = ServerProtocol(max_size=MAX_FRAME_BYTES, logger=_WIRE_LOG)
    # http.server has consumed the request; hand it back as bytes so that the protocol's
    # own parser moves past the handshake and reads frames next.
    lines = [handler.requestline, *(f"{k}: {v}" for k, v in handler.headers.items()), "", ""]
    protocol.receive_data("\r\n".join(lines).encode("iso-8859-1"))
    requests = [e for e in protocol.events_received() if isinstance(e, Request)]
    if requests:
        response = protocol.accept(requests[0])
    else:
        response = protocol.reject(400, "Failed to open a WebSocket connection.\n")
    protocol.send_response(response)
    state.record_status(entry, response.status_code)
    handler.close_connection = True
    try:
        _flush(handler, protocol)
        if response.status_code == 101:
            _Connection(handler, protocol, path).run()
    except (Interrupted, OSError):
        pass  # the emulator went down, or the client vanished: no answer, like a crash
    finally:
        state.record_done(entry)
    return True


def _flush(handler: ChannelHandler, protocol: ServerProtocol) -> None:
    for data in protocol.data_to_send():
        if data:
            handler.wfile.write(data)


class _Connection:
    """One authenticated-or-not channel connection, on its handler's thread."""

    def __init__(self, handler: ChannelHandler, protocol: ServerProtocol, path: str) -> None:
        self.handler = handler
        self.protocol = protocol
        self.path = path
        self.switches = handler.emulator._channel
        self.generation = handler.state.generation()
        self.dispatcher = Dispatcher(
            path, handler.state, handler.emulator._activity, self.switches, self.generation
        )
        self.authenticated = False
        self._fragments: list[bytes] = []

    def run(self) -> None:
        # A selector, not select.select(): that one fails on descriptors above 1023.
        with selectors.DefaultSelector() as selector:
            selector.register(self.handler.connection, selectors.EVENT_READ)
            self._loop(selector)

    def _loop(self, selector: selectors.BaseSelector) -> None:
        auth_deadline = time.monotonic() + self.switches.auth_timeout
        while self.protocol.state is not State.CLOSED and not self.protocol.close_expected():
            timeout = None
            if not self.authenticated:
                timeout = auth_deadline - time.monotonic()
                if timeout <= 0:
                    self._refuse("Authentication timed out")
                    return
            if not selector.select(timeout):
                continue
            # read1: at most one read on the socket, and whatever rfile already buffered.
            data = self.handler.rfile.read1(_READ_SIZE)
            if not data:
                self.protocol.receive_eof()
                return
            self.protocol.receive_data(data)
            for frame in self.protocol.events_received():
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                    self._fragments.append(bytes(frame.data))
                    if frame.fin:
                        message, self._fragments = b"".join(self._fragments), []
                        self._receive(message)
                if self.protocol.close_expected():
                    break
            _flush(self.handler, self.protocol)

    def _receive(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            message = None
        self.switches.record(self.path, message)
        if not self.authenticated:
            self._authenticate(message)
            return
        answers = self.dispatcher.dispatch(message)
        if answers and self.switches.delay:
            self.handler.state.wait(self.switches.delay, self.generation)
        for answer in answers:
            self.protocol.send_text(json.dumps(answer).encode())

    def _authenticate(self, message: Any) -> None:
        if not (
            isinstance(message, dict)
            and message.get("authVersion") == 1
            and _credential(message.get("clientIdentifier"))
            and _credential(message.get("clientPasskey"))
        ):
            return  # not an auth frame: ignored, the auth timeout still runs
        identifier, passkey = message["clientIdentifier"], message["clientPasskey"]
        refusal = self._refusal(identifier, passkey)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.authenticated = True
        self.protocol.send_text(b'{"success": true}')

    def _refusal(self, identifier: str, passkey: str) -> str | None:
        invalid = f'Failed to validate client: Invalid client passkey for client "{identifier}"'
        if self.switches.refuse_auth:
            return invalid
        token = self.handler.state.settings().token
        if token is None:
            return None
        match = TOKEN_PATTERN.match(token)
        if identifier.startswith("guest:") or match is None:
            return (
                "Failed to validate client: authentication is required; "
                "connect with an API token (sk-lm-...)"
            )
        if identifier != match.group(1) or not hmac.compare_digest(
            passkey.encode(), match.group(2).encode()
        ):
            return invalid
        return None

    def _refuse(self, error: str) -> None:
        self.protocol.send_text(json.dumps({"success": False, "error": error}).encode())
        self.protocol.send_close()
        _flush(self.handler, self.protocol)


def _credential(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_CREDENTIAL
