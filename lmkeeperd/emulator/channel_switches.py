"""The websocket channel's fault switches and its frame log (ws.py and rpc.py read them).

Its own module so that the transport (ws.py), the endpoints (rpc.py) and the
`Emulator` facade share it without importing one another.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_AUTH_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One frame a channel client sent (t = time.monotonic() on arrival)."""

    t: float
    path: str
    type: str | None
    endpoint: str | None
    # An rpcCall's parameter as sent (None when absent): what the SDK contract tests compare.
    parameter: Any = None


class ChannelSwitches:
    """The channel's fault switches and its frame log, behind one lock."""

    def __init__(self, auth_timeout: float = DEFAULT_AUTH_TIMEOUT, log_limit: int = 100_000):
        self._lock = threading.Lock()
        self.enabled = True
        self.refuse_auth = False
        self.rpc_missing = False
        self.delay = 0.0
        # Not-found answers are rpcErrors even with throwIfNotFound: false (docs/emulator.md).
        self.strict = False
        self.auth_timeout = _non_negative("auth timeout", auth_timeout)
        self._log_limit = log_limit
        self._frames: list[FrameRecord] = []

    def update(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                if name in ("delay", "auth_timeout"):
                    value = _non_negative(name.replace("_", " "), value)
                else:
                    value = bool(value)
                setattr(self, name, value)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "channel": self.enabled,
                "channel_auth_refused": self.refuse_auth,
                "channel_rpc_missing": self.rpc_missing,
                "channel_delay": self.delay,
                "channel_strict": self.strict,
                "channel_auth_timeout": self.auth_timeout,
            }

    def record(self, path: str, message: Any) -> None:
        kind = endpoint = parameter = None
        if isinstance(message, dict):
            parameter = message.get("parameter")
            kind = message.get("type") if isinstance(message.get("type"), str) else None
            if kind is None and "authVersion" in message:
                kind = "auth"
            endpoint = message.get("endpoint") if isinstance(message.get("endpoint"), str) else None
        with self._lock:
            if len(self._frames) >= self._log_limit:
                del self._frames[: self._log_limit // 2]
            self._frames.append(FrameRecord(time.monotonic(), path, kind, endpoint, parameter))

    def frames(self) -> list[FrameRecord]:
        with self._lock:
            return list(self._frames)

    def clear_frames(self) -> None:
        with self._lock:
            self._frames.clear()


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    return float(value)
