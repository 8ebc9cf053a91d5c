"""Injected load and unload faults: load delays, failing loads, hung unloads."""

from __future__ import annotations

from typing import Any

from lmkeeperd.emulator.checks import is_int, is_number
from lmkeeperd.emulator.errors import InjectedLoadFailure


def check_delay(seconds: float) -> None:
    if not is_number(seconds) or seconds < 0:
        raise ValueError("load delay must be a number >= 0")


class LoadFaults:
    """The fault switches loads and unloads obey.

    Not locked: `EmulatorState` holds its lock around every call, and re-reads
    `delay_for` and `hang_unloads` on each wake-up, which is what makes a change
    here release the requests already waiting.
    """

    def __init__(self) -> None:
        self._default_delay = 0.0
        self._model_delays: dict[str, float] = {}
        self._fail_remaining = 0
        self._fail_message = ""
        self._fail_status = 500
        self.hang_unloads = False

    def set_delay(self, seconds: float, model: str | None) -> None:
        """Loads of `model` take `seconds`; with None every model's do (per-model ones cleared)."""
        check_delay(seconds)
        if model is None:
            self._default_delay = float(seconds)
            self._model_delays.clear()
        else:
            self._model_delays[model] = float(seconds)

    def delay_for(self, key: str) -> float:
        return self._model_delays.get(key, self._default_delay)

    def fail_next(self, n: int, message: str, status: int) -> None:
        if not is_int(n) or n < 0:
            raise ValueError("n must be an integer >= 0")
        if not is_int(status) or not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if not isinstance(message, str):
            raise ValueError("message must be a string")
        self._fail_remaining = n
        self._fail_message = message
        self._fail_status = status

    def take_failure(self) -> InjectedLoadFailure | None:
        """The failure the next load must end in, using one up; None when none is due."""
        if self._fail_remaining <= 0:
            return None
        self._fail_remaining -= 1
        return InjectedLoadFailure(self._fail_message, self._fail_status)

    def describe(self) -> dict[str, Any]:
        return {
            "load_delay": self._default_delay,
            "model_load_delays": dict(self._model_delays),
            "fail_next_loads": self._fail_remaining,
            "hang_unloads": self.hang_unloads,
        }
