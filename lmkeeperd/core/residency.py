"""The lifecycle core's rules for several resident models (L24-L28).

Models of ours stay loaded beside the current one (`_others`) up to
`Settings.max_loaded` and the memory budget (`Settings.budget_gb`, estimates
from `ModelEstimates`). Selecting a resident loads nothing: it becomes the
current model (L24). Selecting another asks placement (placement.py) for room:
the least recently used idle resident is evicted (`evicted`, reason
"max_loaded" or "budget"); when only busy ones could make room the switch waits
for the first to be idle, at most `busy_switch_wait`, then loads beside them
(L25). Make-before-break (L26): the new model loads while the old one keeps
serving (room for one more than `max_loaded`, never more than the budget) and
the old one goes once it landed (`_trim`); "auto" makes before it breaks only
when a budget is known and both fit it: with no budget (count-only admission)
it is L4's break-before-make. A load LM Studio refuses for lack of resources
evicts the least recently used idle resident and is tried again once that
unload is done, one retry per eviction (L27). Each resident has its own idle
timer; pinned models never idle out, are never evicted, do not count against
`max_loaded`, are loaded at start and after an outage, and one ejected by hand
is followed (not loaded again until the next start or outage) (L28).

Streams are counted across clients (L8), each as one model's use (L28): the
resident it names, else the current model (`Usage.uses`). A stream on one
resident stops only that one's timer: the current model still idles out beside
it. Evictions and other background unloads still wait for every stream to end
(L7). `Lifecycle` (machine.py) inherits these.
"""

from __future__ import annotations

import math

from lmkeeperd.core.actions import Action, Notify
from lmkeeperd.core.commands import CommandRules
from lmkeeperd.core.phases import State
from lmkeeperd.core.placement import Limits, Seat, place
from lmkeeperd.core.records import Resident


class ResidencyRules(CommandRules):
    """L24-L28. The rest of the rules are machine.py's (`Lifecycle`)."""

    def _start_load(
        self, model: str, now: float, out: list[Action], *, draft: bool = False
    ) -> None:
        raise NotImplementedError  # machine.py

    def _swallow(self, old: str | None, new: str, out: list[Action]) -> None:
        raise NotImplementedError  # machine.py

    # --- placement ---------------------------------------------------------

    def _limits(self, extra: int = 0) -> Limits:
        return Limits(
            max_loaded=self._settings.max_loaded + extra,
            budget=self._settings.budget_gb,
            pinned=frozenset(self._settings.pinned),
        )

    def _landing(self) -> list[Seat]:
        """Loads that may still land (abandoned, L30; nobody waits for, L5; pinned ones,
        L28): they count in the budget, never evicted."""
        main = self._main
        seats = [Seat(op.model, op.started, idle=False) for op in self._ledger.landing]
        for op_id, op in self._ledger.ops.items():
            if op.kind == "load" and not op.draft and op_id != main.op:
                seats.append(Seat(op.model, op.started, idle=False))
        return seats

    def _leaving(self) -> list[Seat]:
        """Instances of ours on their way out: unloads in flight beside the current model's
        and those waiting for client streams to end or the instance to be idle (L7, L20,
        L22). Until they are gone they hold their memory (L25)."""
        going = self._ledger.leaving(self._main.op)
        return [Seat(model, self._now, idle=False) for model in going]

    def _seats(self) -> list[Seat]:
        """The residents as placement sees them (L25): the current model and the others.
        While a client stream is open an idle one beside the current model still goes
        only once it ends (L7): it `lingers`."""
        main, seats = self._main, []
        if main.model is not None and main.serving:
            last = main.last_use if main.last_use is not None else self._now
            seats.append(Seat(main.model, last, main.phase is State.LOADED))
        lingers = bool(self._usage.streams)
        for model, other in self._others.items():
            last = other.last_use if other.last_use is not None else self._now
            seats.append(Seat(model, last, not self._used(other), lingers=lingers))
        return seats

    def _used(self, other: Resident) -> bool:
        """L7, L19, L28: a resident is in use: a stream naming it, or LM Studio busy."""
        return self._usage.in_use(other.instance, other.model)

    def _make_before_break(self, target: str) -> bool:
        """L26: load `target` before the old model goes? "auto": only when a budget is
        known and everything fits it together; without one it is L4's break-before-make."""
        mode, budget = self._settings.switch, self._settings.budget_gb
        if mode != "auto":
            return mode == "make-before-break"
        need = self._estimates.get(target, 0.0)
        return budget is not None and self.budget_used_gb() + need <= budget

    def _place(self, target: str, now: float, out: list[Action], *, force: bool = False) -> None:
        """Bring `target` in (L24-L26): promote it, or make room and load it."""
        intent, main = self._intent, self._main
        self._refusal = None  # a newer placement replaces a retry waiting (L27)
        self._take_back(target, now)
        if target in self._others:
            self._swallow(intent.queued, target, out)
            intent.queued = None
            self._room_wait_from = None
            self._promote(target, now, out)
            return
        mbb = self._make_before_break(target)
        limits = self._limits(1 if mbb else 0)  # L26: one more while the new one loads
        plan = place(
            [target],
            self._seats(),
            limits,
            self._estimates,
            landing=self._landing(),
            leaving=self._leaving(),
            force=force,
        )
        self._swallow(intent.queued, target, out)
        if plan.blocked:  # in use (L7, L19, L25): the switch waits for it
            intent.queued = target
            if self._room_wait_from is None and main.phase is not State.STREAMING:
                self._room_wait_from = now  # L7, L20 time a wait behind the current one
            return
        intent.queued = None  # an older switch waiting for a load (L30) is replaced
        self._room_wait_from = None
        current = main.model if main.serving else None
        self._announce(plan.evict, target, limits, out)
        for model in plan.evict:
            if model != current:
                self._evict(model, now, out)
        self._switched(target, now, out)
        if current is not None and current in plan.evict:  # L4: unload first, then load
            intent.next = target
            self._unload_main("switch", now, out)
            return
        if current is not None:
            self._park(now)
        self._start_load(target, now, out)

    def _announce(
        self, victims: tuple[str, ...], target: str, limits: Limits, out: list[Action]
    ) -> None:
        """`evicted` for each resident placement chose, with why: the count or the budget.

        A switch with one resident and no budget is L4's plain switch: no `evicted`."""
        seats = self._seats()
        if not self._others and limits.budget is None:
            return
        for model in victims:
            counted = sum(1 for s in seats if s.model not in limits.pinned)
            full = counted + (target not in limits.pinned) > limits.max_loaded
            instance = self._main.instance if model == self._main.model else None
            if model in self._others:
                instance = self._others[model].instance
            fields = {
                "model": model,
                "instance_id": instance,
                "reason": "max_loaded" if full else "budget",
                "for": target,
            }
            out.append(Notify("evicted", fields))
            seats = [s for s in seats if s.model != model]

    def _switched(self, target: str, now: float, out: list[Action]) -> None:
        """A switch that loads `target`: warn once per window when they thrash."""
        fields = self._thrash.switched(target, now, self._settings.max_loaded)
        if fields is not None:
            out.append(Notify("thrashing", fields))

    def _room_due(self, now: float, out: list[Action]) -> None:
        """L25: a switch waited `busy_switch_wait` for room; it loads beside the busy ones."""
        if self._intent.queued is None:
            self._room_wait_from = None  # the switch that waited was dropped or replaced
        at = self._room_at()
        if at is None or now < at:
            return
        self._room_wait_from = None
        queued, main = self._intent.queued, self._main
        if queued is None or self._ledger.load_in_flight() is not None:
            return  # what lands first re-places it (L30)
        if main.phase in (State.IDLE, State.LOADED):
            self._intent.queued = None
            self._place(queued, now, out, force=True)

    def _room_freed(self, now: float, out: list[Action]) -> None:
        """L25: a switch that waits for room goes on as soon as there is room: a resident
        became idle, an unload finished, a load that might land did or is known gone."""
        queued, main = self._intent.queued, self._main
        if queued is None or self._room_wait_from is None or self._refusal is not None:
            return
        if main.phase in (State.IDLE, State.LOADED) and self._ledger.load_in_flight() is None:
            self._place(queued, now, out)

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
        if main.phase is State.STREAMING:
            parked.idle_at = None  # in use (L26: the old model keeps serving)
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

    def _take_back(self, target: str, now: float) -> None:
        """An eviction of `target` still waiting for it to be idle is dropped: selected
        again, it stays a resident (never a second instance, L28)."""
        if target in self._others or target == self._main.model:
            return
        for d in self._ledger.deferred:
            if d.model == target and d.reason == "switch":
                self._ledger.keep(d.instance_id)
                back = Resident(model=target, instance=d.instance_id, phase=State.LOADED)
                self._others[target] = back
                self._rearm(back, now)
                return

    def _evict(self, model: str, now: float, out: list[Action]) -> None:
        """L25: an idle resident goes to make room."""
        other = self._others.pop(model)
        if other.instance is not None:
            self._unload_background(model, other.instance, "switch", now, out)

    def _trim(self, now: float, out: list[Action]) -> None:
        """L25, L26: once nothing loads, residents past `max_loaded` or the budget go, the
        least recently used idle one first (a make-before-break's old model, a resident a
        forced load went beside). Busy ones stay until they are idle."""
        if not self._others or self._main.phase is State.LOADING or self._stopped:
            return  # L26: the old model goes once the new one landed
        limits, main = self._limits(), self._main
        while True:
            seats = self._seats()
            counted = sum(1 for s in seats if s.model not in limits.pinned)
            used = sum(self._estimates.get(s.model, 0.0) for s in seats + self._landing())
            full = counted > limits.max_loaded
            if not full and (limits.budget is None or used <= limits.budget):
                return
            idle = [
                s
                for s in seats
                if s.idle and s.model in self._others and s.model not in limits.pinned
            ]
            if not idle:
                return
            victim = min(idle, key=lambda s: (s.last_use, s.model)).model
            fields = {
                "model": victim,
                "instance_id": self._others[victim].instance,
                "reason": "max_loaded" if full else "budget",
                "for": main.model,
            }
            out.append(Notify("evicted", fields))
            self._evict(victim, now, out)

    def _rearm(self, other: Resident, start: float) -> None:
        """L28: a resident's own idle timer; pinned models never idle out."""
        pinned = other.model in self._settings.pinned
        other.restart_idle(start, 0.0 if pinned else self._settings.idle_timeout)

    def _used_by_client(
        self, model: str | None, now: float, *, ended: bool = False, stream: int | None = None
    ) -> bool:
        """L24, L28: a stream (`stream`, counted here as `model`'s) or activity naming a
        resident beside the current one is its use: its timer stops while a stream is open
        and counts from `now` after."""
        other = self._others.get(model) if model is not None else None
        if other is None:
            return False
        if stream is not None:
            self._usage.streams[stream] = model
        if not ended and self._usage.uses(model):
            other.last_use, other.idle_at = now, None
        else:
            self._rearm(other, now)
        return True

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
        self._room_due(now, out)

    def _retry_queued(self, now: float, out: list[Action]) -> None:
        """L25: a resident in use became idle: a switch that waited for room goes on, and
        residents past the limits go."""
        queued = self._intent.queued
        free = self._main.phase in (State.IDLE, State.LOADED) and bool(self._others)
        if queued is not None and free and self._ledger.load_in_flight() is None:
            self._intent.queued = None
            self._begin_switch(queued, now, out)
        self._trim(now, out)

    def _others_gone(self, now: float, out: list[Action], reason: str | None) -> None:
        """Every resident beside the current one: unloaded (`reason`) or forgotten (None)."""
        others, self._others = self._others, {}
        for model, other in others.items():
            if reason is not None and other.instance is not None:
                self._unload_background(model, other.instance, reason, now, out)

    # --- strays of ours kept as residents (L22, L28) --------------------------

    def _adopt_resident(self, model: str, instance: str, now: float, out: list[Action]) -> bool:
        """L22, L28: a stray of ours (a resident before a restart) stays as a resident when
        placement says it fits beside what we hold and the current model's place (what a
        pending selection will load, or one place kept free: with `max_loaded` 1 a stray is
        never kept beside nothing), with no eviction; its idle timer starts anew from `now`,
        its last use just before the current model's (the first to go, L25). Never a second
        instance of a model held or loading; a busy stray, or one that does not fit, is
        L22's."""
        main, intent = self._main, self._intent
        if not self._hands_on() or instance in self._usage.busy or self._usage.streams:
            return False
        if model == self._settings.draft_model.strip() or model in self._others:
            return False
        ops = self._ledger.ops.values()
        if main.model == model or any(o.kind == "load" and o.model == model for o in ops):
            return False
        seats = self._seats()
        if main.model is not None and main.phase is State.LOADING:
            seats.append(Seat(main.model, now, idle=False))
        held = {s.model for s in seats}
        pending = (intent.debounce_target, intent.queued, intent.next, intent.wanted)
        ahead = [m for m in dict.fromkeys(pending) if m is not None and m not in held]
        if not ahead and not any(s.model == main.model for s in seats):
            ahead = [""]  # the current model's place stays its own
        # What a selection will load sits in use: over the limits, `model` waits (blocked).
        seats += [Seat(m, now, idle=False) for m in ahead if m != model]
        limits, landing = self._limits(), self._landing()
        plan = place([model], seats, limits, self._estimates, landing=landing)
        if plan.evict or plan.blocked or model not in plan.load:
            return False
        self._ledger.keep(instance)
        back = Resident(model=model, instance=instance, phase=State.LOADED)
        self._others[model] = back
        self._rearm(back, now)
        if main.serving and main.last_use is not None and main.last_use <= now:
            back.last_use = math.nextafter(main.last_use, -math.inf)  # evicted before it (L25)
        fields = {"model": model, "instance_id": instance, "resident": True}
        out.append(Notify("stray_adopted", fields))
        return True

    # --- refused loads (L27) -------------------------------------------------

    def _refused(self, model: str, message: str, now: float, out: list[Action]) -> bool:
        """L27: LM Studio refused `model` for lack of resources. Evict the least recently
        used idle resident and retry once that unload is done; False: nothing to evict."""
        if self._usage.streams:
            return False  # L7: nothing goes while a stream is open
        pinned = self._settings.pinned
        idle = [
            (other.last_use if other.last_use is not None else self._now, name)
            for name, other in self._others.items()
            if not self._used(other) and name not in pinned and other.instance is not None
        ]
        if not idle:
            return False
        victim = min(idle)[1]
        other = self._others[victim]
        fields = {
            "model": victim,
            "instance_id": other.instance,
            "reason": "refused by LM Studio",
            "for": model,
        }
        out.append(Notify("evicted", fields))
        last = self._ledger.last_op
        self._evict(victim, now, out)
        if self._ledger.last_op == last:
            return False  # deferred: not gone, no retry
        self._refusal = (model, self._ledger.last_op, message)
        return True

    def _evicted_for_refusal(self, op_id: int, gone: bool, now: float, out: list[Action]) -> None:
        """L27: the eviction a refused load waited for is done: retry it (one retry per
        eviction). Found busy (`gone` False): try the next resident, or fail (L6)."""
        refusal = self._refusal
        if refusal is None or refusal[1] != op_id:
            return
        self._refusal = None
        model, _, message = refusal
        if gone:
            if self._intent.wanted == model and self._main.phase is State.IDLE:
                self._begin_switch(model, now, out)
            return
        if not self._refused(model, message, now, out):
            self._refusal_failed(model, message, out)

    def _refusal_failed(self, model: str, message: str, out: list[Action]) -> None:
        """L27, L6: nothing left to evict: the refused load is reported failed."""
        out.append(Notify("load_failed", {"model": model, "error": message, "draft": False}))
        self._last_error = f"load of {model} failed: {message}"
        if self._intent.wanted == model:
            self._intent.wanted = None
