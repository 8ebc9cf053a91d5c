"""Guards shared by the daemon's listeners (the proxy, the control socket).

Theory of operation
-------------------
A flood of connections must neither starve the daemon of file descriptors nor
fill its log. Three pieces:

- `ConnectionCap`: each listener admits at most `limit` connections. Every
  admitted connection holds a `Slot` and says when it is *idle* (waiting for a
  client that has asked for nothing yet, or between requests, holding no
  stream); a new connection is idle from the start. A newcomer over the cap
  takes the slot of the connection idle the longest, which is closed (shed);
  only when no connection is idle is the newcomer refused, answered at once
  with a short error and closed. So a flood of silent connections can never
  lock real clients out, and a client holding a stream or waiting for an
  answer is never cut to make room.
- `BurstLog`: one log line per burst of the same event: the first occurrence
  at once, then at most one summary per `window` seconds with a `count`, and
  nothing once the burst is over.
- `install_accept_guard(loop)`: asyncio's accept loop reports running out of
  file descriptors (EMFILE, ENFILE) or kernel memory through the loop's
  exception handler, with a traceback, and retries a second later. It goes on
  trying the rest of its batch (up to the backlog, 100) after the first
  failure and reports each one, so a listener out of descriptors logged about
  a hundred tracebacks a second (60-120 MB of log in under a minute, measured). The
  guard turns exactly that report into a rate-limited `accept_failed` event
  (945 reports in 10 s became 2 lines in a run with `ulimit -n 64`) and
  passes every other report on unchanged.
"""

from __future__ import annotations

import asyncio
import errno
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger()

# A burst's summary line comes at most this often.
BURST_WINDOW_S = 10.0

# What asyncio's accept loop (selector_events._accept_connection, 3.11-3.13) says.
_ACCEPT_MESSAGE = "socket.accept() out of system resource"


class BurstLog:
    """Logs `event` once per burst, with a `count` of the occurrences it stands for."""

    def __init__(self, event: str, *, level: str = "warning", window: float = BURST_WINDOW_S):
        self._event = event
        self._level = level
        self._window = window
        self._pending = 0
        self._fields: dict[str, Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, **fields: Any) -> None:
        """One occurrence; call from the event loop's thread."""
        if self._timer is None:
            self._emit(1, fields)
            self._timer = asyncio.get_running_loop().call_later(self._window, self._flush)
        else:
            self._pending += 1
            self._fields = fields

    def _flush(self) -> None:
        if self._pending:
            self._emit(self._pending, self._fields)
            self._pending = 0
            self._timer = asyncio.get_running_loop().call_later(self._window, self._flush)
        else:
            self._timer = None  # the burst is over: the next occurrence is logged at once

    def _emit(self, count: int, fields: dict[str, Any]) -> None:
        getattr(log, self._level)(self._event, **fields, count=count)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Slot:
    """One admitted connection's place under its listener's cap."""

    __slots__ = ("_cap", "_close", "released")

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap
        self._close: Callable[[], None] | None = None
        self.released = False

    def attach(self, close: Callable[[], None]) -> None:
        """How to close this connection when it is shed (its transport's `abort`)."""
        self._close = close

    def idle(self) -> None:
        """The connection may be shed to make room from now on (the newest idle goes last)."""
        if not self.released:
            self._cap._idle.pop(self, None)
            self._cap._idle[self] = None

    def busy(self) -> None:
        """The connection must not be shed (a request under way, a stream, a subscription)."""
        self._cap._idle.pop(self, None)

    def release(self) -> None:
        """The connection is gone (idempotent)."""
        if not self.released:
            self.released = True
            self._cap._idle.pop(self, None)
            self._cap.live -= 1

    def _shed(self) -> None:
        # A connection accepted in the same burst may not have begun yet (no `attach`):
        # it is closed as it begins (GuardedStreamProtocol.connection_made).
        close = self._close
        self.release()
        if close is not None:
            close()


class ConnectionCap:
    """At most `limit` connections on one listener; idle ones make room for newcomers."""

    def __init__(self, listener: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"{listener}: the connection cap must be at least 1, not {limit}")
        self.listener = listener
        self.limit = limit
        self.live = 0
        self.shed_total = 0
        self.refused_total = 0
        self._idle: OrderedDict[Slot, None] = OrderedDict()
        self._shed_log = BurstLog("connections_shed", level="info")
        self._refused_log = BurstLog("connections_refused")

    def admit(self) -> Slot | None:
        """A slot for a new connection, or None: refuse it (every admitted one is busy)."""
        if self.live >= self.limit:
            if not self._idle:
                self.refused_total += 1
                self._refused_log.hit(listener=self.listener, cap=self.limit)
                return None
            oldest, _ = self._idle.popitem(last=False)
            oldest._shed()
            self.shed_total += 1
            self._shed_log.hit(listener=self.listener, cap=self.limit)
        self.live += 1
        slot = Slot(self)
        slot.idle()  # it has asked for nothing yet
        return slot

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        self._shed_log.close()
        self._refused_log.close()


class Refuse(asyncio.Protocol):
    """A connection over the cap: `message` is sent, then the connection is closed."""

    def __init__(self, message: bytes) -> None:
        self._message = message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._message)
        transport.close()


class GuardedStreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, holding a `Slot` for as long as its connection lives."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        slot: Slot | None = None,
    ) -> None:
        super().__init__(reader, connected, loop=loop)
        self.slot = slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.slot is not None and isinstance(transport, asyncio.Transport):
            if self.slot.released:  # shed before it began: never serve it
                transport.abort()
                return
            self.slot.attach(transport.abort)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.slot is not None:
            self.slot.release()


def _address(context: dict[str, Any]) -> str:
    sock = context.get("socket")
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:
        return "?"
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(name, bytes):
        return name.decode(errors="replace")
    return str(name)


def install_accept_guard(loop: asyncio.AbstractEventLoop) -> None:
    """Make `loop` log failed accepts as rate-limited `accept_failed` events (module doc)."""
    previous = loop.get_exception_handler()
    bursts: dict[tuple[str, str], BurstLog] = {}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == _ACCEPT_MESSAGE and isinstance(exc, OSError):
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            address = _address(context)
            burst = bursts.setdefault((name, address), BurstLog("accept_failed", level="error"))
            burst.hit(errno=name, error=exc.strerror or str(exc), address=address)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
