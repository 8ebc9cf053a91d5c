"""A small blocking client for the control socket (the CLI imports this on every call).

Standard library only, and no asyncio: starting the CLI must stay fast. For the same
reason it uses `_socket` (the C module under `socket`, whose import pulls in enum and
selectors) and reads typing's names only for the type checker: together about 6 ms of
`lmkeeperd status` (bench/bench_status_cli.py).

    request(path, {"op": "status"})          one connection, one request, one reply
    for event in subscribe(path): ...         events until the daemon closes
    with ControlClient(path) as c: c.request(...)   several requests on one connection

Replies are returned as they came, ``{"ok": false, ...}`` included: deciding what a refusal
means (exit code 1 for the CLI) is the caller's business. Errors raised:

* `DaemonNotRunning` when there is no socket, or nothing listens on it;
* `DaemonError` when the connection fails otherwise, times out, or ends without a reply;
* `ProtocolError` when a reply is not a JSON object on one line.
"""

from __future__ import annotations

import _socket
import json
import os
import time

from lmkeeperd.errors import DaemonError, DaemonNotRunning, ProtocolError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType
    from typing import Any, TypeAlias

    # Paths are taken as str or os.PathLike (pathlib.Path included) without importing
    # pathlib, which would be most of this module's import time.
    StrPath: TypeAlias = "str | os.PathLike[str]"

# Status replies are small; this only stops a broken daemon from eating the CLI's memory.
MAX_REPLY = 16 * 1024 * 1024

_RECV_SIZE = 65536


class ControlClient:
    """One connection to the daemon; a context manager."""

    def __init__(self, path: StrPath, *, timeout: float | None = 5.0) -> None:
        self._path = os.fspath(path)
        self._timeout = timeout
        self._sock: _socket.socket | None = None
        self._buffer = bytearray()

    def __enter__(self) -> ControlClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            self._connect(sock)
        except FileNotFoundError:
            sock.close()
            raise DaemonNotRunning(f"no lmkeeperd is running (no socket at {self._path})") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonNotRunning(
                f"no lmkeeperd is running (connection refused at {self._path})"
            ) from None
        except TimeoutError:
            sock.close()
            raise DaemonError(f"lmkeeperd did not accept a connection on {self._path}") from None
        except OSError as e:
            sock.close()
            raise DaemonError(f"cannot connect to {self._path}: {e.strerror or e}") from None
        self._sock = sock

    def _connect(self, sock: _socket.socket) -> None:
        # With a timeout set, a Unix socket whose listen backlog is full fails at once with
        # EAGAIN instead of waiting: a daemon busy accepting a burst of connections. Wait for
        # it, within the timeout, as a blocking connect would.
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            try:
                sock.connect(self._path)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError from None
                time.sleep(0.002)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def request(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request object and return the daemon's reply object."""
        self.send(obj)
        reply = self.read_message()
        if reply is None:
            raise DaemonError(f"lmkeeperd closed the connection on {self._path} without a reply")
        return reply

    def send(self, obj: Mapping[str, Any]) -> None:
        sock = self._connected()
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            sock.sendall(data)
        except TimeoutError:
            raise DaemonError(f"lmkeeperd is not reading requests on {self._path}") from None
        except OSError as e:
            raise DaemonError(f"lost the connection to lmkeeperd: {e.strerror or e}") from None

    def read_message(self) -> dict[str, Any] | None:
        """The next reply or event, or None when the daemon closed the connection."""
        line = self._read_line()
        if line is None:
            return None
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError(f"garbled reply from lmkeeperd: {_preview(line)}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"garbled reply from lmkeeperd: {_preview(line)}")
        return message

    def fileno(self) -> int:
        """The socket's descriptor, to wait on with `select` beside other work."""
        return self._connected().fileno()

    def has_buffered_line(self) -> bool:
        """A whole message is already read: `read_message` returns it without waiting."""
        return b"\n" in self._buffer

    def set_timeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def _connected(self) -> _socket.socket:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        return self._sock

    def _read_line(self) -> bytes | None:
        sock = self._connected()
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_REPLY:
                raise ProtocolError(f"reply from lmkeeperd is longer than {MAX_REPLY} bytes")
            try:
                chunk = sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise DaemonError(
                    f"lmkeeperd did not answer within {self._timeout} s on {self._path}"
                ) from None
            except ConnectionResetError:
                chunk = b""
            except OSError as e:
                raise DaemonError(f"lost the connection to lmkeeperd: {e.strerror or e}") from None
            if not chunk:
                if self._buffer:
                    raise DaemonError("lmkeeperd closed the connection in the middle of a reply")
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line


def request(
    path: StrPath, obj: Mapping[str, Any], *, timeout: float | None = 5.0
) -> dict[str, Any]:
    """Open a connection, send one request, return its reply."""
    with ControlClient(path, timeout=timeout) as client:
        return client.request(obj)


def subscribe(path: StrPath, *, timeout: float | None = 5.0) -> Iterator[dict[str, Any]]:
    """Yield the daemon's events until it closes the connection.

    `timeout` bounds connecting and the subscription's acknowledgement; waiting for events
    has no timeout. A refused subscription raises `DaemonError` with the daemon's message.
    """
    with ControlClient(path, timeout=timeout) as client:
        ack = client.request({"op": "subscribe"})
        if ack.get("ok") is not True:
            raise DaemonError(f"lmkeeperd refused the subscription: {ack.get('error', ack)}")
        client.set_timeout(None)
        while (event := client.read_message()) is not None:
            yield event


def _preview(line: bytes) -> str:
    text = line[:80].decode("utf-8", "replace")
    return repr(text + ("..." if len(line) > 80 else ""))
