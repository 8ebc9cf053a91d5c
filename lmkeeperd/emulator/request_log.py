"""The request log: every request the emulator received, newest `limit` kept."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

DEFAULT_LOG_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the emulator received (control requests excluded).

    `t` is `time.monotonic()` when the request arrived; `status` is 0 while no
    answer has been sent yet (an unload still hanging, a load still waiting);
    `t_done` is when the answer was complete, set just before its last bytes
    are written (so a client holding the whole answer always sees it set), or
    when the emulator gave up on the request; None while in flight.
    """

    t: float
    method: str
    path: str
    body: Any
    status: int
    authorized: bool
    t_done: float | None = None


class LogEntry:
    """A request's log entry while it is served (mutable); `freeze()` is what callers see."""

    __slots__ = ("authorized", "body", "method", "path", "status", "t", "t_done")

    def __init__(self, t: float, method: str, path: str, body: Any, authorized: bool) -> None:
        self.t = t
        self.method = method
        self.path = path
        self.body = body
        self.authorized = authorized
        self.status = 0
        self.t_done: float | None = None

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            self.t, self.method, self.path, self.body, self.status, self.authorized, self.t_done
        )


class RequestLog:
    """The entries in order of arrival. Not locked: `EmulatorState` holds its lock around it."""

    def __init__(self, limit: int = DEFAULT_LOG_LIMIT) -> None:
        if limit < 1:
            raise ValueError("log_limit must be at least 1")
        self._entries: deque[LogEntry] = deque(maxlen=limit)

    def add(self, entry: LogEntry) -> None:
        self._entries.append(entry)

    def records(self) -> list[RequestRecord]:
        return [entry.freeze() for entry in self._entries]

    def clear(self) -> None:
        self._entries.clear()
