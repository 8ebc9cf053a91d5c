"""What the daemon may read of the lifecycle core: `CoreView`, and its implementation.

`CoreView` is the read-only face the daemon's roles get (`Host.core`); only the
driver holds the `Lifecycle` (machine.py) and calls `handle`. `LifecycleView`
holds the core's records (records.py, ledger.py) and answers every query on
them; nothing here changes state.
"""

from __future__ import annotations

from typing import Protocol

from lmkeeperd.core.events import Settings
from lmkeeperd.core.explain import Explanation, ResidentView
from lmkeeperd.core.ledger import Ledger
from lmkeeperd.core.phases import State
from lmkeeperd.core.records import Intent, Resident, Usage, plural
from lmkeeperd.core.thrash import ThrashWatch

LMSTUDIO = "lmstudio"


class CoreView(Protocol):
    """The core as the daemon reads it: queries only, no `handle`."""

    @property
    def settings(self) -> Settings: ...
    @property
    def state(self) -> State: ...
    @property
    def model(self) -> str | None: ...
    @property
    def instance_id(self) -> str | None: ...
    @property
    def adopted(self) -> bool: ...
    @property
    def selected(self) -> str | None: ...
    @property
    def pending(self) -> str | None: ...
    @property
    def engine(self) -> str: ...
    @property
    def active_streams(self) -> int: ...
    @property
    def server_busy(self) -> str | None: ...
    @property
    def busy_instances(self) -> dict[str, str]: ...
    @property
    def activity_source(self) -> str: ...
    @property
    def keep_alive(self) -> float | None: ...
    @property
    def draft(self) -> tuple[str, str] | None: ...
    @property
    def stopped(self) -> bool: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def unloads_in_flight(self) -> int: ...
    @property
    def loads_in_flight(self) -> int: ...
    @property
    def deferred_unloads(self) -> tuple[tuple[str, str, str], ...]: ...
    @property
    def residents(self) -> dict[str, str]: ...
    def owned_instances(self) -> dict[str, str]: ...
    def residents_view(self) -> tuple[ResidentView, ...]: ...
    def budget_used_gb(self) -> float: ...
    def idle_eject_in(self, now: float) -> float | None: ...
    def next_deadline(self) -> float | None: ...
    def explain(self, now: float) -> Explanation: ...


class LifecycleView:
    """The core's records and every read-only query on them (implements `CoreView`)."""

    def __init__(self, settings: Settings | None = None, *, engine: str = LMSTUDIO) -> None:
        self._settings = settings or Settings()
        self._main = Resident()  # the current model (what status shows)
        self._others: dict[str, Resident] = {}  # resident beside it (L24; max_loaded > 1)
        self._intent = Intent()
        self._usage = Usage()
        self._ledger = Ledger()
        self._engine = engine
        self._server: dict[str, tuple[str, ...]] = {}
        self._stopped = False
        self._now = 0.0
        self._cause: tuple[str, float] | None = None  # last transition's cause and time
        self._last_error: str | None = None
        # L25-L28 (residency.py): what the driver estimated each model needs (GB), since
        # when a switch waits for room, a refused load waiting for its eviction (model,
        # unload op, LM Studio's message), pinned models still to load, the thrash watch.
        self._estimates: dict[str, float] = {}
        self._room_wait_from: float | None = None
        self._refusal: tuple[str, int, str] | None = None
        self._pins_due: list[str] = []
        self._pins_started = False
        self._thrash = ThrashWatch()

    # --- read-only view (status) --------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def state(self) -> State:
        return self._main.phase

    @property
    def model(self) -> str | None:
        """What lmkeeperd has loaded, is loading or is unloading; None when idle."""
        return self._main.model

    @property
    def instance_id(self) -> str | None:
        return self._main.instance

    @property
    def adopted(self) -> bool:
        return self._main.adopted

    @property
    def selected(self) -> str | None:
        return self._intent.selected

    @property
    def pending(self) -> str | None:
        """A selection not applied yet: queued behind streams or a load, the debounce or
        an unload."""
        return self._intent.pending

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def active_streams(self) -> int:
        """Client streams only; LM Studio's own view is `server_busy`."""
        return len(self._usage.streams)

    @property
    def server_busy(self) -> str | None:
        """What LM Studio says our model is doing ("generating", ...), None when not busy."""
        return self._usage.describe(self._main.instance)

    @property
    def busy_instances(self) -> dict[str, str]:
        """Every instance LM Studio reported busy: instance id -> what it is doing."""
        return {i: b.describe() for i, b in self._usage.busy.items()}

    @property
    def activity_source(self) -> str:
        """L21: "lmstudio" when LM Studio's activity is read, else "clients only"."""
        return "lmstudio" if self._usage.source else "clients only"

    @property
    def keep_alive(self) -> float | None:
        """The selected model's own idle timeout, if its selection gave one."""
        return self._intent.keep_alive_of(self._intent.selected)

    @property
    def draft(self) -> tuple[str, str] | None:
        """(model, instance id) of the draft model lmkeeperd loaded, if any (L15)."""
        return self._main.draft

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def unloads_in_flight(self) -> int:
        return self._ledger.unloads()

    @property
    def loads_in_flight(self) -> int:
        """Loads whose outcome still matters (superseded ones excluded)."""
        return self._ledger.loads()

    @property
    def deferred_unloads(self) -> tuple[tuple[str, str, str], ...]:
        """(model, instance, reason) of unloads waiting for streams to end or idleness."""
        return tuple((d.model, d.instance_id, d.reason) for d in self._ledger.deferred)

    def owned_instances(self) -> dict[str, str]:
        """Every instance the core considers its own (L22): instance id -> model.

        The main and draft instances, and those it is unloading or waiting to unload.
        """
        owned = self._ledger.owned()
        for model, other in self._others.items():
            if other.instance:
                owned[other.instance] = model
        main = self._main
        if main.draft:
            owned[main.draft[1]] = main.draft[0]
        if main.instance and main.model:
            owned[main.instance] = main.model
        return owned

    @property
    def residents(self) -> dict[str, str]:
        """Models of ours loaded beside the current one (L24): model -> instance id."""
        return {m: r.instance for m, r in self._others.items() if r.instance}

    def residents_view(self) -> tuple[ResidentView, ...]:
        """Every resident of ours (L24-L28): the current model first, then those beside it,
        then pinned models still loading."""
        main, usage = self._main, self._usage
        pinned = self._settings.pinned
        views: list[ResidentView] = []

        def view(r: Resident, model: str, state: str, current: bool) -> ResidentView:
            return ResidentView(
                model=model,
                instance_id=r.instance,
                state=state,
                pinned=model in pinned,
                current=current,
                last_used=r.last_use,
                idle_deadline=r.idle_at,
                estimate_gb=self._estimates.get(model),
                streams=sum(1 for m in usage.streams.values() if m == model),
                busy=r.instance is not None and r.instance in usage.busy,
            )

        if main.model is not None:
            phase = main.phase
            state = "loaded" if main.serving else phase.value
            views.append(view(main, main.model, state, True))
        for model, other in self._others.items():
            views.append(view(other, model, "loaded", False))
        for op in self._ledger.ops.values():
            if op.kind == "load" and op.pinned and not op.superseded:
                views.append(view(Resident(model=op.model), op.model, "loading", False))
        return tuple(views)

    def budget_used_gb(self) -> float:
        """L25, L30: GB the residents take by their estimates, loads in flight (also those
        nobody waits for), abandoned loads that may still land and instances of ours on
        their way out (unloads in flight or waiting, L7, L20) included."""
        main, ledger = self._main, self._ledger
        models = [main.model] if main.model is not None else []
        models += list(self._others)
        models += [
            op.model
            for op_id, op in ledger.ops.items()
            if op_id != main.op and op.kind == "load" and not op.draft
        ]
        models += [op.model for op in ledger.landing]
        models += ledger.leaving(main.op)
        return sum(self._estimates.get(m, 0.0) for m in models)

    def idle_eject_in(self, now: float) -> float | None:
        at = self._main.idle_at
        return None if at is None else max(0.0, at - now)

    def next_deadline(self) -> float | None:
        """The monotonic time of the next timer (debounce, idle, forced switch), or None."""
        times = [self._intent.debounce_at, self._main.idle_at, self._force_at(), self._room_at()]
        times += [r.idle_at for r in self._others.values()]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def explain(self, now: float) -> Explanation:
        """Why the core is where it is, for status to copy."""
        waiting, until = self._waiting_for()
        main = self._main
        op = self._ledger.ops.get(main.op) if main.op is not None else None
        return Explanation(
            state=main.phase.value,
            model=main.model,
            cause=self._cause[0] if self._cause else None,
            cause_at=self._cause[1] if self._cause else None,
            waiting_for=waiting,
            waiting_until=until,
            in_flight=op.kind if op else None,
            in_flight_since=op.started if op else None,
            in_flight_s=round(now - op.started, 3) if op else None,
            pending=self.pending,
            keep_alive=self.keep_alive,
            idle_eject_at=main.idle_at,
            server_busy=self.server_busy,
            activity_source=self.activity_source,
            deferred_unloads=len(self._ledger.deferred),
        )

    def _waiting_for(self) -> tuple[str | None, float | None]:
        if self._intent.debounce_at is not None:
            return "debounce", self._intent.debounce_at
        if self._refusal is not None:
            model, _, message = self._refusal
            return f"an eviction to retry the load of {model} (LM Studio refused: {message})", None
        room = self._room_at()
        if room is not None:
            return f"{self._room_blockers()} to make room for {self._intent.queued}", room
        phase = self._main.phase
        landing = self._ledger.load_in_flight()
        if landing is not None and self._intent.queued is not None and not self._main.serving:
            return f"the load of {landing.model} to finish: LM Studio cannot cancel a load", None
        if phase is State.LOADING:
            return "load in flight", None
        if phase is State.UNLOADING:
            return "unload in flight", None
        if phase is State.STREAMING:
            if self._usage.streams:
                return f"{plural(len(self._usage.streams), 'stream')} to end", None
            return f"server busy: {self.server_busy}", self._force_at()
        return None, None

    def _room_blockers(self) -> str:
        """L25, L7: what a switch waiting for room waits for, in words."""
        usage, ledger = self._usage, self._ledger
        busy = [m for m, r in self._others.items() if usage.in_use(r.instance, m)]
        parts = [f"{', '.join(busy)} to be idle"] if busy else []
        if usage.streams and not busy:
            parts.append(f"{plural(len(usage.streams), 'stream')} to end")
        gone = ledger.leaving(self._main.op)
        if gone:
            parts.append(f"{', '.join(dict.fromkeys(gone))} to be unloaded")
        return " and ".join(parts) or "a resident to be idle"

    def _in_use(self) -> bool:
        """L7/L19: a client stream naming the current model is open (L28: a stream on
        another resident is that one's use), or LM Studio says our instance is busy."""
        return self._usage.in_use(self._main.instance, self._main.model)

    def _room_at(self) -> float | None:
        """L25: when a switch waiting for room loads beside the busy residents anyway."""
        since, wait = self._room_wait_from, self._settings.busy_switch_wait
        if since is None or wait <= 0 or self._intent.queued is None:
            return None
        return since + wait

    def _force_at(self) -> float | None:
        wait = self._settings.busy_switch_wait
        since = self._intent.busy_wait_from
        if since is None or wait <= 0:
            return None
        return since + wait
