"""The lifecycle core's rules for several resident models (L24, L25, L28).

With `Settings.max_loaded` above 1, models of ours stay loaded beside the
current one (`_others`). Selecting one of them loads nothing: it becomes the
current model (L24). Selecting another asks placement (placement.py) for room:
the least recently used idle resident is evicted, a busy one makes the switch
wait (L25). Each resident has its own idle timer; pinned models are never
evicted and never idle out (L28). With `max_loaded` 1 (the default) `_others`
stays empty and a switch is L4's: unload the current model, then load.

Streams are counted across clients (L8) and L7 holds for every resident: while
any stream is open nothing is evicted or idled out. Not yet here: pinned models
loaded at start and after an outage, the memory budget (placement takes one),
make-before-break (L26) and eviction on a refused load (L27).
`Lifecycle` (machine.py) inherits these.
"""

from __future__ import annotations

from lmkeeperd.core.actions import Action, Notify
from lmkeeperd.core.commands import CommandRules
from lmkeeperd.core.phases import State
from lmkeeperd.core.placement import Limits, Seat, place
from lmkeeperd.core.records import Resident


class ResidencyRules(CommandRules):
    """L24, L25, L28. The rest of the rules are machine.py's (`Lifecycle`)."""

    def _start_load(
        self, model: str, now: float, out: list[Action], *, draft: bool = False
    ) -> None:
        raise NotImplementedError  # machine.py

    def _unload_main(
        self,
        reason: str,
        now: float,
        out: list[Action],
        request: int | None = None,
        *,
        forced: bool = False,
    ) -> None:
        raise NotImplementedError  # machine.py

    # --- placement ---------------------------------------------------------

    def _limits(self) -> Limits:
        return Limits(max_loaded=self._settings.max_loaded, pinned=frozenset(self._settings.pinned))

    def _landing(self) -> list[Seat]:
        """Abandoned loads that may still land: they count in the budget (L30)."""
        return [Seat(op.model, op.started, idle=False) for op in self._ledger.landing]

    def _seats(self) -> list[Seat]:
        """The residents as placement sees them (L25): the current model and the others."""
        main, seats = self._main, []
        if main.model is not None and main.serving:
            last = main.last_use if main.last_use is not None else self._now
            seats.append(Seat(main.model, last, main.phase is State.LOADED, main.estimate))
        for model, other in self._others.items():
            last = other.last_use if other.last_use is not None else self._now
            seats.append(Seat(model, last, not self._used(other), other.estimate))
        return seats

    def _used(self, other: Resident) -> bool:
        """L7, L19: a resident beside the current one is in use."""
        return bool(self._usage.streams) or other.instance in self._usage.busy

    def _place(self, target: str, now: float, out: list[Action]) -> None:
        """Bring `target` in (L24, L25): promote it, or make room and load it (L4 order)."""
        intent, main = self._intent, self._main
        if target in self._others:
            self._swallow(intent.queued, target, out)
            intent.queued = None
            self._promote(target, now, out)
            return
        plan = place([target], self._seats(), self._limits(), landing=self._landing())
        self._swallow(intent.queued, target, out)
        if plan.blocked:  # in use (L7, L19, L25): the switch waits for it
            intent.queued = target
            return
        intent.queued = None  # an older switch waiting for a load (L30) is replaced
        current = main.model if main.serving else None
        for model in plan.evict:
            if model != current:
                self._evict(model, now, out)
        if current is not None and current in plan.evict:  # L4: unload first, then load
            intent.next = target
            self._unload_main("switch", now, out)
            return
        if current is not None:
            self._park(now)
        self._start_load(target, now, out)

    def _swallow(self, old: str | None, new: str, out: list[Action]) -> None:
        raise NotImplementedError  # machine.py

    # --- the residents -----------------------------------------------------

    def _park(self, now: float) -> None:
        """The current model stays loaded beside the next one (L24), its timer its own.

        The slot itself is emptied in place (the draft stays: it goes with the current
        model), so whoever holds `self._main` sees it idle."""
        main = self._main
        assert main.model is not None
        parked = main.parked()
        self._others[main.model] = parked
        self._rearm(parked, now)  # current until now: that is its last use (L28)
        main.move("parked")
        main.forget()
        main.stop_idle()
        main.estimate = None

    def _promote(self, target: str, now: float, out: list[Action]) -> None:
        """L24: a resident selected becomes the current model; its last use is now."""
        other, main = self._others.pop(target), self._main
        if main.model is not None and main.serving:
            self._park(now)
        main.assume(other)
        self._intent.wanted = target
        out.append(Notify("resident_selected", {"model": target, "instance_id": main.instance}))
        if self._used(main):
            self._move("landed_in_use", out, "resident selected")
            main.idle_at = None
        else:
            self._move("landed", out, "resident selected")
            self._restart_idle(now)

    def _evict(self, model: str, now: float, out: list[Action]) -> None:
        """L25: an idle resident goes to make room."""
        other = self._others.pop(model)
        if other.instance is not None:
            self._unload_background(model, other.instance, "switch", now, out)

    def _rearm(self, other: Resident, start: float) -> None:
        """L28: a resident's own idle timer; pinned models never idle out."""
        pinned = other.model in self._settings.pinned
        other.restart_idle(start, 0.0 if pinned else self._settings.idle_timeout)

    def _fire_residents(self, now: float, out: list[Action]) -> None:
        """L28: residents whose own idle timer fell due are unloaded, unless in use."""
        for model, other in list(self._others.items()):
            if other.idle_at is None or now < other.idle_at:
                continue
            if self._used(other):
                self._rearm(other, now)  # L7, L19: counted again from now
                continue
            del self._others[model]
            if other.instance is not None:
                self._unload_background(model, other.instance, "idle", now, out)

    def _retry_queued(self, now: float, out: list[Action]) -> None:
        """L25: a resident in use became idle: a switch that waited for room goes on."""
        queued = self._intent.queued
        if queued is None or self._ledger.load_in_flight() is not None:
            return
        if self._main.phase in (State.IDLE, State.LOADED) and self._others:
            self._intent.queued = None
            self._begin_switch(queued, now, out)

    def _others_gone(self, now: float, out: list[Action], reason: str | None) -> None:
        """Every resident beside the current one: unloaded (`reason`) or forgotten (None)."""
        others, self._others = self._others, {}
        for model, other in others.items():
            if reason is not None and other.instance is not None:
                self._unload_background(model, other.instance, reason, now, out)
