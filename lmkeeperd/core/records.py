"""The lifecycle core's state as records, each owning its own resets (no rules here).

- `Resident`: a model of ours on the server, or on its way there or out: its
  phase (moved only through the table in phases.py), the op in flight, its idle
  timer and last use, and the draft that goes with it (L15).
- `Intent`: what the user asked for: the selection, its keep-alive, the model
  we want loaded, and the selection waiting its turn (debounce, queue, next).
- `Usage`: who uses what: client streams (each naming the model it used) and
  LM Studio's own busy instances (L19, L21).
The ledger of ops is in ledger.py; the rules that change all of them in machine.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from lmkeeperd.core.phases import State, Trigger, next_phase


@dataclass(slots=True)
class Resident:
    """The main model's slot: empty (`model` None) exactly when the phase is idle."""

    model: str | None = None
    instance: str | None = None
    phase: State = State.IDLE
    op: int | None = None  # the load (loading) or unload (unloading) in flight
    adopted: bool = False  # loaded by someone else, ours since it was selected (L17)
    idle_at: float | None = None  # when the idle timer fires (L9-L11), None: not running
    last_use: float | None = None  # our own last activity, when known (L9, L19)
    estimate: float | None = None  # GB it takes on the server, when known (L25)
    draft_op: int | None = None  # a load of the draft in flight (L15)
    draft: tuple[str, str] | None = None  # (model, instance) of the draft we loaded (L15)
    draft_due: bool = False  # the draft's load waits for another load to land (L30)

    def move(self, trigger: Trigger) -> State:
        """Take the table's transition; returns the phase left. Raises and changes nothing
        when the table has no such row."""
        old, self.phase = self.phase, next_phase(self.phase, trigger)
        return old

    def parked(self) -> Resident:
        """A copy that stays loaded beside the current model (L24): no op, no draft."""
        return replace(self, phase=State.LOADED, op=None, draft=None, draft_op=None)

    def assume(self, other: Resident) -> None:
        """Become `other` (a resident selected again, L24), keeping phase and draft."""
        keep = ("phase", "draft", "draft_op")
        for f in fields(self):
            if f.name not in keep:
                setattr(self, f.name, getattr(other, f.name))

    def take(self, model: str, op: int) -> None:
        """A load of `model` is now what this slot waits for (L1, L5)."""
        self.model, self.instance, self.adopted, self.op = model, None, False, op

    def forget(self) -> None:
        """The model is no longer ours (unloaded, vanished, given up, another engine)."""
        self.model = self.instance = None
        self.adopted = False
        self.op = None
        self.draft_due = False

    def stop_idle(self) -> None:
        self.idle_at = self.last_use = None

    def restart_idle(self, start: float, timeout: float) -> None:
        """L9-L11: the idle timer counts `timeout` from `start`; 0 or less never fires."""
        self.last_use = start
        self.idle_at = start + timeout if timeout > 0 else None

    @property
    def serving(self) -> bool:
        """Loaded, in use or not (the phases where the model serves)."""
        return self.phase in (State.LOADED, State.STREAMING)

    def holds(self, model: str) -> bool:
        """L2: `model` is this slot's and loading, loaded or in use."""
        return model == self.model and self.phase in (
            State.LOADING,
            State.LOADED,
            State.STREAMING,
        )


@dataclass(slots=True)
class Intent:
    """The selection and what waits to be applied (L1-L3, L7, L17)."""

    selected: str | None = None
    keep_alive: tuple[str, float] | None = None  # (model, seconds) of the selection
    wanted: str | None = None  # what we mean to have loaded (restored after outages)
    debounce_target: str | None = None
    debounce_at: float | None = None
    queued: str | None = None  # waits for our model to be free (L7, L19) or a load (L30)
    next: str | None = None  # load to start once the current unload finishes (L4)
    busy_wait_from: float | None = None  # a switch waits on server-only activity (L20)

    @property
    def pending(self) -> str | None:
        """A selection not applied yet: queued, in its debounce or behind an unload."""
        return self.queued or self.debounce_target or self.next

    def cancel_debounce(self) -> None:
        self.debounce_target = None
        self.debounce_at = None

    def drop_pending(self) -> None:
        """Nothing waits any more: no debounce, queue or next load."""
        self.cancel_debounce()
        self.queued = self.next = None

    def keep_alive_of(self, model: str | None) -> float | None:
        """The selection's own idle timeout, when `model` is the one it selected."""
        if self.keep_alive and self.keep_alive[0] == model and model == self.selected:
            return self.keep_alive[1]
        return None


@dataclass(frozen=True, slots=True)
class Busy:
    """LM Studio reports this instance busy (L19) since `since`."""

    doing: str
    queued: int
    since: float

    def describe(self) -> str:
        """What it is doing, for events and errors: "generating", "idle, 2 queued"."""
        if self.queued > 0:
            return f"{self.doing}, {self.queued} queued"
        return self.doing


@dataclass(slots=True)
class Usage:
    """Who uses what: client streams (L7, L8) and LM Studio's busy instances (L19-L21)."""

    streams: dict[int, str | None] = field(default_factory=dict)  # id -> model it used
    busy: dict[str, Busy] = field(default_factory=dict)  # instance -> what LM Studio does
    source: bool | None = None  # LM Studio's activity readable? None: not told yet
    blind_warned: bool = False

    def in_use(self, instance: str | None, model: str | None) -> bool:
        """L7/L19/L28: a client stream naming `model` is open, or LM Studio says
        `instance` is busy."""
        return self.uses(model) or (instance is not None and instance in self.busy)

    def uses(self, model: str | None) -> bool:
        """L28: a client stream naming `model` is open (one named by no model counts
        as every model's use)."""
        return any(m is None or m == model for m in self.streams.values())

    def describe(self, instance: str | None) -> str | None:
        busy = self.busy.get(instance) if instance else None
        return busy.describe() if busy else None


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
