"""Injected load and unload faults: load delays, failing loads, hung unloads, guardrails."""

from __future__ import annotations

from typing import Any

from lmkeeperd.emulator.checks import is_int, is_number
from lmkeeperd.emulator.errors import GuardrailRefusal, InjectedLoadFailure

# LM Studio 0.3.27+'s refusal, word for word (lmstudio-real.md, "Loads refused for lack of
# resources"); {gb} is the model's own estimate, as there.
GUARDRAIL_MESSAGE = (
    "Model loading was stopped due to insufficient system resources. Under the current "
    "settings, this model requires approximately {gb:.2f} GB of memory, and continuing to "
    "load it would likely overload your system and cause it to freeze. If you think this "
    "is incorrect, you can adjust the model loading guardrails in settings."
)


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
        # The guardrail: refuse a load when the loaded sizes plus the new model's would pass
        # memory_limit (bytes), or when max_models instances are loaded already. None = off.
        self.memory_limit: int | None = None
        self.max_models: int | None = None

    def set_guardrail(self, memory_gb: float | None, max_models: int | None) -> None:
        if memory_gb is not None and (not is_number(memory_gb) or memory_gb <= 0):
            raise ValueError("memory_gb must be a number > 0, or null for no memory limit")
        if max_models is not None and (not is_int(max_models) or max_models < 1):
            raise ValueError("max_models must be an integer >= 1, or null for no count limit")
        self.memory_limit = None if memory_gb is None else int(memory_gb * 1e9)
        self.max_models = max_models

    def guardrail_refusal(
        self, size_bytes: int, loaded_sizes: list[int]
    ) -> GuardrailRefusal | None:
        """The refusal a load of a `size_bytes` model gets beside `loaded_sizes`, if any.

        Like LM Studio (bug tracker #1562), the loaded models count in full: a load that
        would fit once another model is unloaded is refused all the same.
        """
        too_many = self.max_models is not None and len(loaded_sizes) >= self.max_models
        too_big = (
            self.memory_limit is not None and sum(loaded_sizes) + size_bytes > self.memory_limit
        )
        if too_many or too_big:
            return GuardrailRefusal(GUARDRAIL_MESSAGE.format(gb=size_bytes / 1e9))
        return None

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
            "guardrail_memory_gb": None if self.memory_limit is None else self.memory_limit / 1e9,
            "guardrail_max_models": self.max_models,
        }
