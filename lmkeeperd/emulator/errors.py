"""What a request to the emulated LM Studio can run into, raised by `EmulatorState`."""

from __future__ import annotations


class NoSuchModel(LookupError):
    """The catalog has no model by that key."""


class NoSuchInstance(LookupError):
    """No loaded instance has that id."""


class NotLoaded(LookupError):
    """An inference request named a model that is downloaded but not loaded."""


class InjectedLoadFailure(Exception):
    """A load failed because `fail_next_loads` said so."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class Interrupted(Exception):
    """The server went down or stopped while this request was being served."""


class GuardrailRefusal(InjectedLoadFailure):
    """LM Studio's model loading guardrails refused a load: it would not fit (faults.py)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 500)
