"""The lifecycle core's rules for pinned models (L28).

Pinned models (`Settings.pinned`) are loaded at start (the first snapshot of the
server) and again after an outage, one load at a time (L30), as residents beside
the current model: they never idle out, are never evicted and do not count
against `max_loaded` (they count in the budget). One ejected by hand is followed
(L18): it is not loaded again until the next start or outage. A stray of ours of
a pinned model is kept as that resident rather than loaded anew (L22).
`Lifecycle` (machine.py) inherits these.
"""

from __future__ import annotations

from lmkeeperd.core.actions import Action, CancelLoad, Notify, StartLoad
from lmkeeperd.core.events import LoadFinished, ServerSnapshot, Settings
from lmkeeperd.core.ledger import Op
from lmkeeperd.core.phases import State
from lmkeeperd.core.records import Resident
from lmkeeperd.core.residency import ResidencyRules


class PinnedRules(ResidencyRules):
    """L28's pinned models. The rest of the rules are machine.py's (`Lifecycle`)."""

    def _pins_on_snapshot(self, snap: ServerSnapshot, now: float, out: list[Action]) -> None:
        """L28: pinned models load at start (the first snapshot) and after an outage."""
        if not (snap.after_outage or not self._pins_started) or not self._hands_on():
            return
        self._pins_started = True
        self._pins_due = [p for p in self._settings.pinned if p not in self._pins_due]
        self._load_pins(now, out)

    def _holds(self, model: str) -> bool:
        """`model` is ours already: current, resident, or a load of it in flight."""
        if self._main.model == model or model in self._others:
            return True
        ops = self._ledger.ops.values()
        return any(op.kind == "load" and op.model == model and not op.draft for op in ops)

    def _load_pins(self, now: float, out: list[Action]) -> None:
        """The next pinned model due, once no load is in flight (L30)."""
        if not self._hands_on() or self._ledger.load_in_flight() is not None:
            return
        while self._pins_due:
            model = self._pins_due.pop(0)
            if self._holds(model) or self._unloading_by_hand(model):
                continue
            stray = next((d for d in self._ledger.deferred if d.model == model), None)
            if stray is not None:  # a stray of ours still there: kept, not loaded again
                self._pin(model, stray.instance_id, False, now, out)
                continue
            config = dict(self._settings.load_config)
            op = self._ledger.add(Op("load", model, now, config=config, pinned=True))
            out.append(StartLoad(op, model, config, avoid=self._ledger.unloading(model)))
            out.append(Notify("load_started", {"model": model, "draft": False, "pinned": True}))
            return

    def _unloading_by_hand(self, model: str) -> bool:
        """An unload command of `model` is in flight: followed like an eject by hand (L18)."""
        ops = self._ledger.ops.values()
        return any(o.kind == "unload" and o.model == model and o.reason == "command" for o in ops)

    def _pin_landed(self, op: Op, event: LoadFinished, now: float, out: list[Action]) -> None:
        """A pinned model loaded: a resident beside the current one that never idles out."""
        if self._holds(op.model):  # selected meanwhile and loaded (never two instances)
            if not event.adopted:
                self._unload_background(op.model, event.instance_id, "superseded", now, out)
            return
        if event.adopted and event.instance_id in self._ledger.owned():
            self._pins_due.append(op.model)  # adopted one on its way out: load it anew
            self._load_pins(now, out)
            return
        self._pin(op.model, event.instance_id, event.adopted, now, out)

    def _keep_pin(self, model: str, instance: str, now: float, out: list[Action]) -> bool:
        """L28: a load of a pinned model made for a selection, superseded in flight, lands
        as the pinned resident (never unloaded unasked), unless it is held already."""
        if model not in self._settings.pinned or self._holds(model) or not self._hands_on():
            return False
        if model in self._pins_due:
            self._pins_due.remove(model)
        self._pin(model, instance, False, now, out)
        return True

    def _pin(self, model: str, instance: str, adopted: bool, now: float, out: list[Action]) -> None:
        """`instance` of pinned `model` is a resident now: it never idles out (L28)."""
        pin = Resident(model=model, instance=instance, phase=State.LOADED, adopted=adopted)
        self._ledger.keep(instance)
        self._others[model] = pin
        self._rearm(pin, now)
        out.append(Notify("pinned_loaded", {"model": model}))

    def _pin_stray(self, model: str, instance: str, now: float, out: list[Action]) -> bool:
        """L22, L28: a stray of ours of a pinned model not held is kept as that pinned
        resident (a pinned load of it in flight is waited for no more)."""
        if not self._hands_on() or instance in self.owned_instances():
            return False
        if model in self._others:  # a resident has its instance: this one is extra (L22)
            self._ledger.landed(model)  # an abandoned load of it, if any, lands no more (L30)
            out.append(Notify("stray_found", {"model": model, "instance_id": instance}))
            self._unload_background(model, instance, "stray", now, out)
            return True
        if model not in self._settings.pinned or self._main.model == model:
            return False
        for op_id, op in self._ledger.ops.items():
            if op.kind == "load" and op.model == model and not op.draft:
                if not op.pinned:
                    return False  # the current model's load: L22's own rule decides
                op.superseded = True
                out.append(CancelLoad(op_id))
        self._ledger.landed(model)
        self._pin(model, instance, False, now, out)
        return True

    def _pins_changed(self, old: Settings, now: float, out: list[Action]) -> None:
        """L28: a config reload changed `pinned`. Keys it adds are loaded now, one at a time
        (L30), after any selection waiting (even one ejected by hand: the reload asks again);
        keys it removes become ordinary residents, their idle timers counted from their last
        use, and may be evicted at once when past the limits (L25)."""
        before, after = set(old.pinned), set(self._settings.pinned)
        if before == after:
            return
        for model in before ^ after:  # a resident's timer: pinned never idles out
            other = self._others.get(model)
            if other is not None:
                self._rearm(other, other.last_use if other.last_use is not None else now)
        self._pins_due = [p for p in self._pins_due if p in after]
        if self._pins_started:
            added = [p for p in self._settings.pinned if p not in before]
            self._pins_due += [p for p in added if p not in self._pins_due]
        if before - after:
            self._trim(now, out)
        self._load_pins_waiting(now, out)

    def _load_pins_waiting(self, now: float, out: list[Action]) -> None:
        """Pinned models due load once no selection waits (debounce, queue, next; L30)."""
        intent = self._intent
        if self._pins_due and intent.pending is None and self._main.phase is not State.UNLOADING:
            self._load_pins(now, out)

    def _drop_pins(self, out: list[Action]) -> None:
        """Another engine or exit: pinned loads in flight are waited for no more (L5). Back
        on LM Studio, the next snapshot loads (or adopts) them again, as at start."""
        self._pins_due = []
        self._pins_started = False
        for op_id, op in self._ledger.ops.items():
            if op.kind == "load" and op.pinned and not op.superseded:
                op.superseded = True
                out.append(CancelLoad(op_id))
