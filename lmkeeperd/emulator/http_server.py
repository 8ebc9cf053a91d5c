"""The emulator's threaded HTTP server: one thread per connection, each one tracked.

The `Emulator` (server.py) owns it; it reaches back only through `ServedEmulator`,
so that this module never imports server.py.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from lmkeeperd.emulator.handler import CLIENT_GONE, EmulatorRequestHandler


class ServedEmulator(Protocol):
    """What the server needs of its `Emulator`: its phase, and connection tracking."""

    _phase: str

    def _track(self, connection: socket.socket, thread: threading.Thread) -> None: ...

    def _untrack(self, connection: socket.socket) -> None: ...


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: ServedEmulator) -> None:
        self.emulator = emulator
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, EmulatorRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a bad resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # The handler writes headers and body in separate sends; with Nagle's algorithm on,
        # the body of every answer on a kept-alive connection waited ~40 ms for the client's
        # delayed ACK (bench/bench_select_latency.py). LM Studio's server does not do that.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="emulator-connection",
            daemon=True,
        )
        # Registered before the thread runs, so going down can never miss a connection.
        self.emulator._track(request, thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        self.emulator._untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_GONE) or (
            isinstance(error, OSError) and self.emulator._phase != "up"
        ):
            return
        super().handle_error(request, client_address)
