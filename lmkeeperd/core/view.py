"""The lifecycle core's state, and the read-only view of it that status copies.

`Lifecycle` (machine.py) inherits this: the rules live there and change these
fields; nothing here changes state. Kept apart so the machine reads as its rules.
"""

from __future__ import annotations

import enum

from lmkeeperd.core.bookkeeping import Busy, Deferred, Op, Request, plural
from lmkeeperd.core.events import Settings
from lmkeeperd.core.explain import Explanation

LMSTUDIO = "lmstudio"


class State(enum.Enum):
    IDLE = "idle"  # nothing of ours is loaded or loading
    LOADING = "loading"  # a load of `model` is in flight
    LOADED = "loaded"  # `model` is loaded and not in use; the idle timer may run
    STREAMING = "streaming"  # `model` is loaded and in use: a client stream, or busy (L19)
    UNLOADING = "unloading"  # `model` is being unloaded (switch, idle, command, exit)


class LifecycleView:
    """The core's fields and every read-only query on them."""

    def __init__(self, settings: Settings | None = None, *, engine: str = LMSTUDIO) -> None:
        self.settings = settings or Settings()
        self._state = State.IDLE
        self._model: str | None = None
        self._instance: str | None = None
        self._adopted = False
        self._selected: str | None = None
        self._keep_alive: tuple[str, float] | None = None  # (model, seconds) of the selection
        self._wanted: str | None = None  # what we mean to have loaded (restored after outages)
        self._engine = engine
        self._streams: set[int] = set()
        self._debounce_target: str | None = None
        self._debounce_at: float | None = None
        self._queued: str | None = None  # selection waiting for our model to be free (L7, L19)
        self._next: str | None = None  # load to start once the current unload finishes (L4)
        self._idle_from: float | None = None  # our own last activity, when known
        self._idle_at: float | None = None
        self._busy_wait_from: float | None = None  # a switch waits on server-only activity (L20)
        self._load_op: int | None = None
        self._unload_op: int | None = None
        self._draft_op: int | None = None
        self._draft: tuple[str, str] | None = None  # (model, instance) of the draft we loaded
        self._deferred: list[Deferred] = []  # unloads waiting on streams or a busy instance
        self._ops: dict[int, Op] = {}
        self._requests: dict[int, Request] = {}
        self._last_op = 0
        self._server: dict[str, tuple[str, ...]] = {}
        self._busy: dict[str, Busy] = {}  # instance -> what LM Studio says it is doing (L19)
        self._source: bool | None = None  # LM Studio's activity readable? None: not told yet
        self._blind_warned = False
        self._stopped = False
        self._now = 0.0
        self._cause: tuple[str, float] | None = None  # last transition's cause and time
        self.last_error: str | None = None

    # --- read-only view (status) --------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def model(self) -> str | None:
        """What lmkeeperd has loaded, is loading or is unloading; None when idle."""
        return self._model

    @property
    def instance_id(self) -> str | None:
        return self._instance

    @property
    def adopted(self) -> bool:
        return self._adopted

    @property
    def selected(self) -> str | None:
        return self._selected

    @property
    def pending(self) -> str | None:
        """A selection not applied yet: queued behind streams, the debounce or an unload."""
        return self._queued or self._debounce_target or self._next

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def active_streams(self) -> int:
        """Client streams only; LM Studio's own view is `server_busy`."""
        return len(self._streams)

    @property
    def server_busy(self) -> str | None:
        """What LM Studio says our model is doing ("generating", ...), None when not busy."""
        busy = self._busy.get(self._instance) if self._instance else None
        return busy.describe() if busy else None

    @property
    def busy_instances(self) -> dict[str, str]:
        """Every instance LM Studio reported busy: instance id -> what it is doing."""
        return {i: b.describe() for i, b in self._busy.items()}

    @property
    def activity_source(self) -> str:
        """L21: "lmstudio" when LM Studio's activity is read, else "clients only"."""
        return "lmstudio" if self._source else "clients only"

    @property
    def keep_alive(self) -> float | None:
        """The selected model's own idle timeout, if its selection gave one."""
        if self._keep_alive and self._keep_alive[0] == self._selected:
            return self._keep_alive[1]
        return None

    @property
    def draft(self) -> tuple[str, str] | None:
        """(model, instance id) of the draft model lmkeeperd loaded, if any (L15)."""
        return self._draft

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def unloads_in_flight(self) -> int:
        return sum(1 for op in self._ops.values() if op.kind == "unload")

    @property
    def loads_in_flight(self) -> int:
        """Loads whose outcome still matters (superseded ones excluded)."""
        return sum(1 for op in self._ops.values() if op.kind == "load" and not op.superseded)

    @property
    def deferred_unloads(self) -> tuple[tuple[str, str, str], ...]:
        """(model, instance, reason) of unloads waiting for streams to end or idleness."""
        return tuple((d.model, d.instance_id, d.reason) for d in self._deferred)

    def owned_instances(self) -> dict[str, str]:
        """Every instance the core considers its own (L22): instance id -> model.

        The main and draft instances, and those it is unloading or waiting to unload.
        """
        owned = {d.instance_id: d.model for d in self._deferred}
        owned.update({o.instance_id: o.model for o in self._ops.values() if o.kind == "unload"})
        if self._draft:
            owned[self._draft[1]] = self._draft[0]
        if self._instance and self._model:
            owned[self._instance] = self._model
        return owned

    def idle_eject_in(self, now: float) -> float | None:
        return None if self._idle_at is None else max(0.0, self._idle_at - now)

    def next_deadline(self) -> float | None:
        """The monotonic time of the next timer (debounce, idle, forced switch), or None."""
        times = [t for t in (self._debounce_at, self._idle_at, self._force_at()) if t is not None]
        return min(times) if times else None

    def explain(self, now: float) -> Explanation:
        """Why the core is where it is, for status to copy (issue 13)."""
        waiting, until = self._waiting_for()
        op_id = self._load_op if self._state is State.LOADING else self._unload_op
        op = self._ops.get(op_id) if op_id is not None else None
        return Explanation(
            state=self._state.value,
            model=self._model,
            cause=self._cause[0] if self._cause else None,
            cause_at=self._cause[1] if self._cause else None,
            waiting_for=waiting,
            waiting_until=until,
            in_flight=op.kind if op else None,
            in_flight_since=op.started if op else None,
            in_flight_s=round(now - op.started, 3) if op else None,
            pending=self.pending,
            keep_alive=self.keep_alive,
            idle_eject_at=self._idle_at,
            server_busy=self.server_busy,
            activity_source=self.activity_source,
            deferred_unloads=len(self._deferred),
        )

    def _waiting_for(self) -> tuple[str | None, float | None]:
        if self._debounce_at is not None:
            return "debounce", self._debounce_at
        if self._state is State.LOADING:
            return "load in flight", None
        if self._state is State.UNLOADING:
            return "unload in flight", None
        if self._state is State.STREAMING:
            if self._streams:
                return f"{plural(len(self._streams), 'stream')} to end", None
            return f"server busy: {self.server_busy}", self._force_at()
        return None, None

    def _in_use(self) -> bool:
        """L7/L19: a client stream is open, or LM Studio says our instance is busy."""
        return bool(self._streams) or (self._instance is not None and self._instance in self._busy)

    def _force_at(self) -> float | None:
        wait = self.settings.busy_switch_wait
        if self._busy_wait_from is None or wait <= 0:
            return None
        return self._busy_wait_from + wait
