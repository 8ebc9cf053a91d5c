"""Drives the pure lifecycle core with explicit times; no clock, no sleeps."""

from __future__ import annotations

from typing import Any, TypeVar

from lmkeeperd.core import (
    Action,
    CancelLoad,
    CommandDone,
    Event,
    Lifecycle,
    LoadFailed,
    LoadFinished,
    Notify,
    Select,
    Settings,
    StartLoad,
    StartUnload,
    Tick,
    UnloadFailed,
    UnloadFinished,
)

A = TypeVar("A")


def of_type(actions: list[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.core = Lifecycle(Settings(**settings))
        self.now = 0.0
        self.log: list[Action] = []

    def send(self, event: Event, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        out = self.core.handle(event, self.now)
        self.log.extend(out)
        return out

    def tick(self, at: float) -> list[Action]:
        return self.send(Tick(), at)

    def advance(self, seconds: float) -> list[Action]:
        return self.send(Tick(), self.now + seconds)

    # outcomes -------------------------------------------------------------

    def load_ok(self, action: StartLoad, instance: str | None = None) -> list[Action]:
        return self.send(LoadFinished(action.op, instance or action.model))

    def load_err(self, action: StartLoad, error: str = "boom", **kw: Any) -> list[Action]:
        return self.send(LoadFailed(action.op, error, **kw))

    def unload_ok(self, action: StartUnload) -> list[Action]:
        return self.send(UnloadFinished(action.op))

    def unload_err(self, action: StartUnload, error: str = "boom") -> list[Action]:
        return self.send(UnloadFailed(action.op, error))

    # queries --------------------------------------------------------------

    def loads(self, actions: list[Action] | None = None) -> list[StartLoad]:
        return of_type(self.log if actions is None else actions, StartLoad)

    def unloads(self, actions: list[Action] | None = None) -> list[StartUnload]:
        return of_type(self.log if actions is None else actions, StartUnload)

    def cancels(self, actions: list[Action] | None = None) -> list[CancelLoad]:
        return of_type(self.log if actions is None else actions, CancelLoad)

    def events(self, name: str, actions: list[Action] | None = None) -> list[dict[str, Any]]:
        src = self.log if actions is None else actions
        return [dict(n.fields) for n in of_type(src, Notify) if n.event == name]

    def done(self, actions: list[Action] | None = None) -> list[CommandDone]:
        return of_type(self.log if actions is None else actions, CommandDone)

    def loaded(self, model: str, at: float = 0.0, **settings: Any) -> StartLoad:
        """Select `model`, let the debounce pass and the load succeed."""
        self.send(Tick(), at)
        out = self.send(Select(model))
        if not self.loads(out):
            out = self.advance(self.core.settings.switch_debounce)
        (load,) = self.loads(out)
        self.load_ok(load)
        return load
