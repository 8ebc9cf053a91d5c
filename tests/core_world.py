"""A simulated LM Studio and driver for property tests of the lifecycle core.

A small simulated server stands in for LM Studio and a simulated driver
performs the core's actions the way lmkeeperd's real driver does (adopting an
existing instance instead of loading a second one). Loads and unloads may
succeed, fail, or stay outstanding ("never returning") for as long as the
sequence runs. LM Studio's own activity (L19-L21) is simulated too: instances
turn busy and idle, the activity channel comes and goes, an unload that looks
first finds a busy instance and is deferred, abandoned loads land later and are
reported as strays (L22), as are instances whose unload failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from lmkeeperd.core import (
    Action,
    Activity,
    ActivitySource,
    CancelLoad,
    EngineChanged,
    Event,
    Lifecycle,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    ModelEstimates,
    Notify,
    OwnStray,
    ResumeLoad,
    Select,
    ServerActivity,
    ServerSnapshot,
    StartLoad,
    StartUnload,
    State,
    StreamEnded,
    StreamStarted,
    Tick,
    UnloadCommand,
    UnloadDeferred,
    UnloadFailed,
    UnloadFinished,
)
from lmkeeperd.core.phases import TRANSITIONS

MODELS = ["a", "b", "c", "d"]
DEBOUNCE = 0.3
IDLE = 50.0
BUSY_WAIT = 30.0


@dataclass
class World:
    core: Lifecycle
    now: float = 0.0
    server: dict[str, list[str]] = field(default_factory=dict)  # model -> instances
    ours: set[str] = field(default_factory=set)  # instances created by the core's loads
    loads: dict[int, StartLoad] = field(default_factory=dict)  # outstanding
    adopt: dict[int, str | None] = field(default_factory=dict)  # what each load will adopt
    unloads: dict[int, StartUnload] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)  # ops the core stopped waiting for
    strays: set[str] = field(default_factory=set)  # instances of loads that were superseded
    unload_targets: set[str] = field(default_factory=set)  # every instance StartUnload named
    unload_failed: set[str] = field(default_factory=set)  # instances whose unload failed
    busy: set[str] = field(default_factory=set)  # instances LM Studio is busy with (truth)
    estimates: dict[str, float] = field(default_factory=dict)  # the last ModelEstimates sent
    source: bool = True  # can the driver read LM Studio's activity?
    abandoned: list[StartLoad] = field(default_factory=list)  # given up; may still land
    forgotten: set[str] = field(default_factory=set)  # ours, forgotten on leaving LM Studio (L13)
    # The world's own record of the client streams open to LM Studio (L7, L8, L13): the
    # invariants are checked against it, never against the core's count alone.
    # Each stream counts as one model's use (L28): the resident it names, else the current
    # model (None: none yet, every model's use).
    streams: dict[int, str | None] = field(default_factory=dict)
    engine: str = "lmstudio"
    counter: int = 0
    request: int = 0

    def send(self, event: Event) -> None:
        busy_before = set(self.core.busy_instances)
        if isinstance(event, EngineChanged) and event.name != "lmstudio":
            # L13: the model stays on the server, forgotten, with its draft (L15).
            draft = self.core.draft[1] if self.core.draft else None
            self.forgotten.update(i for i in (self.core.instance_id, draft) if i)
            self.forgotten.update(self.core.residents.values())  # and residents beside it
        self.track_streams(event)
        out = self.core.handle(event, self.now)
        self.check(event, out, busy_before)
        self.perform(out)

    def track_streams(self, event: Event) -> None:
        """What the spec says is open: streams to LM Studio, until they end (L8). Streams
        while another engine is in use are not LM Studio's, and leaving it forgets all (L13)."""
        if isinstance(event, StreamStarted) and self.engine == "lmstudio":
            named = event.model if event.model in self.core.residents else self.core.model
            self.streams.setdefault(event.stream, named)
        elif isinstance(event, StreamEnded):
            self.streams.pop(event.stream, None)
        elif isinstance(event, EngineChanged):
            name = event.name.strip().lower()
            if name and name != self.engine:
                if self.engine == "lmstudio":
                    self.streams.clear()
                self.engine = name

    def uses(self, model: str | None) -> bool:
        """L7, L28: a stream naming `model` (or named by none) is open."""
        return any(m is None or m == model for m in self.streams.values())

    def check(self, event: Event, out: list[Action], busy_before: set[str]) -> None:
        core = self.core
        assert core.active_streams == len(self.streams), (core.active_streams, self.streams)
        # A deadline that stays due after an event would make the driver spin.
        due = core.next_deadline()
        assert due is None or due > self.now or core.stopped, (due, self.now)
        forced = {
            str(n.fields["instance_id"])
            for n in out
            if isinstance(n, Notify) and n.event == "switch_forced"
        }
        for n in out:
            if isinstance(n, Notify) and n.event == "state_changed":
                # Every move of the resident is a row of the phase table (phases.py).
                old, new = State(n.fields["from"]), State(n.fields["to"])
                assert new in TRANSITIONS[old].values(), (old, new)
        cleared = set(busy_before) if isinstance(event, ActivitySource) else set()
        if isinstance(event, ServerActivity) and not event.busy:
            cleared.add(event.instance_id)
        for action in out:
            if isinstance(action, StartUnload):
                assert not self.uses(action.model), f"unload under streams {self.streams}"
                instance = action.instance_id
                # L19/L20: never an unload of an instance known busy, unless a forced switch.
                assert instance not in core.busy_instances, f"unload of busy {instance}"
                if instance in busy_before - cleared:
                    assert instance in forced and not action.look_first, action
        assert core.loads_in_flight <= 1, "more than one load in flight"
        self.check_budget(out)
        # L25, L28: never more residents than max_loaded (pinned ones do not count), the one
        # loading or unloading included; one more only while the current model's load or
        # unload is in flight (L26's make-before-break, L25's load beside busy residents, a
        # switch that unloads first) or until the resident past the limit is no longer in
        # use (L7, L19).
        pinned = set(core.settings.pinned)
        held = [m for m in [core.model, *core.residents] if m is not None and m not in pinned]
        in_use = bool(self.streams) or bool(core.busy_instances)
        in_flight = core.state in (State.LOADING, State.UNLOADING)
        extra = 1 if in_flight or in_use else 0
        assert len(held) <= core.settings.max_loaded + extra, (core.model, core.residents)
        assert core.model not in core.residents, core.model
        views = core.residents_view()
        assert len({v.model for v in views}) == len(views), views  # never two of one model
        if not self.source:  # L21: stale busy flags must never block forever
            assert not core.busy_instances, core.busy_instances
        assert (core.state is State.IDLE) == (core.model is None), (core.state, core.model)
        if core.state in (State.LOADED, State.STREAMING):
            assert core.instance_id is not None
            in_use = self.uses(core.model) or core.server_busy is not None
            assert (core.state is State.STREAMING) == in_use, (core.state, core.server_busy)
        quiet = (
            not self.loads
            and not self.unloads
            and core.pending is None
            and not self.streams
            and not core.busy_instances
            and core.unloads_in_flight == 0
        )
        if quiet:
            # L22: with nothing in flight, what the core holds as its own is at most one
            # instance of the selected model, and the draft that goes with it.
            owned = core.owned_instances()
            assert core.deferred_unloads == (), core.deferred_unloads
            keep = {core.instance_id} | ({core.draft[1]} if core.draft else set())
            keep |= set(core.residents.values())  # L24: residents beside it (max_loaded > 1)
            assert set(owned) <= keep, owned

    def check_budget(self, out: list[Action]) -> None:
        """L25: a load lmkeeperd starts leaves the sum over the budget only when nothing
        idle was left to evict (the rest in use, pinned, or loads that may still land)."""
        core = self.core
        budget, pinned = core.settings.budget_gb, core.settings.pinned
        starts = [a for a in out if isinstance(a, StartLoad) and not a.draft]
        if budget is None or not any(a.model not in pinned for a in starts):
            return
        # Residents evicted in this very step hold their memory until their unload is done
        # (the core counts them: L25); they make room for this load, so they are not held
        # against it.
        leaving = sum(self.estimates.get(a.model, 0.0) for a in out if isinstance(a, StartUnload))
        if core.budget_used_gb() - leaving <= budget + 1e-9:
            return
        in_use = bool(self.streams) or bool(core.busy_instances)
        for view in core.residents_view():
            if not view.current and view.state == "loaded":
                assert view.pinned or view.busy or in_use, (view, core.budget_used_gb())

    def perform(self, out: list[Action]) -> None:
        for action in out:
            if isinstance(action, StartLoad):
                # Like the real driver: look at the server when the load starts and
                # adopt an instance that is not on its way out.
                present = [i for i in self.server.get(action.model, []) if i not in action.avoid]
                self.loads[action.op] = action
                # L30: StartLoads minus their outcomes (finished, failed, abandoned): one.
                assert len(self.loads) == 1, f"two loads in flight: {sorted(self.loads)}"
                self.adopt[action.op] = present[0] if present else None
                same = [a for a in self.loads.values() if a.model == action.model and not a.draft]
                assert len(same) <= 1, f"two loads of {action.model} in flight: two instances"
            elif isinstance(action, StartUnload):
                assert action.op not in self.unloads
                self.unloads[action.op] = action
                self.unload_targets.add(action.instance_id)
            elif isinstance(action, CancelLoad):
                self.cancelled.add(action.op)
            elif isinstance(action, ResumeLoad):
                self.cancelled.discard(action.op)  # wanted again: not a stray when it lands

    # outcomes ---------------------------------------------------------------

    def finish_load(self, op: int, ok: bool) -> None:
        action = self.loads.pop(op)
        candidate = self.adopt.pop(op)
        if ok and candidate is not None and candidate in self.server.get(action.model, []):
            self.strays.discard(candidate)  # a stray wanted again is kept, not cleaned up
            self.send(LoadFinished(op, candidate, adopted=True))
        elif ok:
            self.counter += 1
            instance = f"{action.model}#{self.counter}"
            self.server.setdefault(action.model, []).append(instance)
            self.ours.add(instance)
            if op in self.cancelled:
                self.strays.add(instance)
            self.send(LoadFinished(op, instance))
        else:
            self.send(LoadFailed(op, "failed"))

    def finish_unload(self, op: int, ok: bool) -> None:
        action = self.unloads.pop(op)
        if action.look_first and self.source and action.instance_id in self.busy:
            self.send(UnloadDeferred(op, "generating", 1))  # L20: looked, found it busy
        elif ok:
            instances = self.server.get(action.model, [])
            if action.instance_id in instances:
                instances.remove(action.instance_id)
            self.send(UnloadFinished(op))
        else:
            self.unload_failed.add(action.instance_id)
            self.send(UnloadFailed(op, "failed"))

    def abandon_load(self, op: int) -> None:
        """The driver gives up on a load (load_timeout); the server may still finish it."""
        action = self.loads.pop(op)
        self.adopt.pop(op)
        self.abandoned.append(action)
        self.send(LoadFailed(op, "timed out", abandoned=True))

    def land_abandoned(self, index: int) -> None:
        """An abandoned load finishes on the server: the driver reports a stray (L22)."""
        action = self.abandoned.pop(index % len(self.abandoned))
        self.counter += 1
        instance = f"{action.model}#{self.counter}"
        self.server.setdefault(action.model, []).append(instance)
        self.ours.add(instance)
        self.send(OwnStray(action.model, instance))

    def reconcile_strays(self) -> None:
        """The reconcile retries hung unloads: instances ours and no longer tracked (L22)."""
        owned = self.core.owned_instances()
        for model, instances in sorted(self.server.items()):
            for instance in list(instances):
                if instance in self.unload_failed and instance not in owned:
                    self.unload_failed.discard(instance)
                    self.send(OwnStray(model, instance))

    def set_busy(self, index: int, on: bool) -> None:
        pool = sorted({i for v in self.server.values() for i in v}) if on else sorted(self.busy)
        if not pool:
            return
        instance = pool[index % len(pool)]
        (self.busy.add if on else self.busy.discard)(instance)
        if self.source:
            activity = ServerActivity(instance, on, "generating" if on else "idle", 0, self.now)
            self.send(activity)

    def set_source(self, available: bool) -> None:
        self.source = available
        self.send(ActivitySource(available, None if available else "channel down"))
        if available:  # the watcher reports what it sees as soon as it is back
            for instance in sorted(self.busy):
                self.send(ServerActivity(instance, True, "generating", 0, self.now))

    def settle(self) -> None:
        """Let time pass and every outstanding action succeed, until nothing moves."""
        for _ in range(100):
            self.now += DEBOUNCE + 0.01
            self.send(Tick())
            if not self.loads and not self.unloads:
                return
            for op in sorted(self.loads):
                self.finish_load(op, ok=True)
            for op in sorted(self.unloads):
                self.finish_unload(op, ok=True)
        raise AssertionError("the core never settled")


step = st.one_of(
    st.tuples(st.just("select"), st.sampled_from([*MODELS, "  ", " a "])),
    st.tuples(st.just("stream_start"), st.integers(0, 5)),
    st.tuples(st.just("stream_end"), st.integers(0, 5)),
    st.tuples(st.just("activity"), st.none()),
    st.tuples(st.just("engine"), st.sampled_from(["lmstudio", "lmstudio", "ollama"])),
    st.tuples(st.just("time"), st.sampled_from([0.0, 0.1, 0.29, 0.31, 1.0, 60.0])),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("load_fail"), st.integers(0, 3)),
    st.tuples(st.just("unload_ok"), st.integers(0, 3)),
    st.tuples(st.just("unload_fail"), st.integers(0, 3)),
    st.tuples(st.just("snapshot"), st.booleans()),
    st.tuples(st.just("behind_unload"), st.sampled_from(MODELS)),
    st.tuples(st.just("unload_cmd"), st.sampled_from([None, *MODELS])),
    st.tuples(st.just("pressure"), st.none()),
    st.tuples(st.just("busy"), st.integers(0, 5)),
    st.tuples(st.just("not_busy"), st.integers(0, 5)),
    st.tuples(st.just("source"), st.booleans()),
    st.tuples(st.just("abandon"), st.integers(0, 3)),
    st.tuples(st.just("land"), st.integers(0, 3)),
    st.tuples(st.just("reconcile"), st.none()),
    st.tuples(st.just("time"), st.sampled_from([BUSY_WAIT, 2 * IDLE])),
)


def run_step(world: World, kind: str, arg: object) -> None:
    if kind == "select":
        world.send(Select(str(arg)))
    elif kind == "stream_start":
        world.send(StreamStarted(int(str(arg))))
    elif kind == "stream_end":
        world.send(StreamEnded(int(str(arg))))
    elif kind == "activity":
        world.send(Activity())
    elif kind == "engine":
        world.send(EngineChanged(str(arg)))
    elif kind == "time":
        world.now += float(str(arg))
        world.send(Tick())
    elif kind in ("load_ok", "load_fail") and world.loads:
        op = sorted(world.loads)[int(str(arg)) % len(world.loads)]
        world.finish_load(op, ok=kind == "load_ok")
    elif kind in ("unload_ok", "unload_fail") and world.unloads:
        op = sorted(world.unloads)[int(str(arg)) % len(world.unloads)]
        world.finish_unload(op, ok=kind == "unload_ok")
    elif kind == "snapshot":
        loaded = {k: tuple(v) for k, v in world.server.items() if v}
        world.send(ServerSnapshot(loaded, after_outage=bool(arg)))
    elif kind == "behind_unload":
        world.server.pop(str(arg), None)  # someone unloaded it from the GUI
    elif kind == "unload_cmd":
        world.request += 1
        world.send(UnloadCommand(world.request, None if arg is None else str(arg)))
    elif kind == "pressure":
        world.send(MemoryPressure())
    elif kind in ("busy", "not_busy"):
        world.set_busy(int(str(arg)), on=kind == "busy")
    elif kind == "source":
        world.set_source(bool(arg))
    elif kind == "abandon" and world.loads:
        world.abandon_load(sorted(world.loads)[int(str(arg)) % len(world.loads)])
    elif kind == "land" and world.abandoned:
        world.land_abandoned(int(str(arg)))
    elif kind == "reconcile":
        world.reconcile_strays()
    elif kind == "refuse" and world.loads:  # LM Studio's guardrail said no (L27)
        op = sorted(world.loads)[int(str(arg)) % len(world.loads)]
        world.loads.pop(op)
        world.adopt.pop(op)
        world.send(LoadFailed(op, "insufficient system resources", refused=True))
    elif kind == "stream_model":  # a stream naming its model (L24)
        stream, model = arg  # type: ignore[misc]
        world.send(StreamStarted(int(stream), str(model)))
    elif kind == "estimates":
        estimates = dict(zip(MODELS, arg, strict=False))  # type: ignore[call-overload]
        world.estimates.update(estimates)
        world.send(ModelEstimates(estimates))


# LM Studio's own activity (L19-L22) in a smaller alphabet, so that busy instances,
# deferred unloads, forced switches and strays meet often enough to matter.
server_step = st.one_of(
    st.tuples(st.just("select"), st.sampled_from(MODELS[:2])),
    st.tuples(st.just("stream_start"), st.integers(0, 1)),
    st.tuples(st.just("stream_end"), st.integers(0, 1)),
    st.tuples(st.just("time"), st.sampled_from([0.31, 0.31, BUSY_WAIT, IDLE])),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("unload_ok"), st.integers(0, 3)),
    st.tuples(st.just("unload_fail"), st.integers(0, 3)),
    st.tuples(st.just("busy"), st.integers(0, 5)),
    st.tuples(st.just("busy"), st.integers(0, 5)),
    st.tuples(st.just("not_busy"), st.integers(0, 5)),
    st.tuples(st.just("source"), st.booleans()),
    st.tuples(st.just("abandon"), st.integers(0, 3)),
    st.tuples(st.just("land"), st.integers(0, 3)),
    st.tuples(st.just("reconcile"), st.none()),
    st.tuples(st.just("unload_cmd"), st.sampled_from([None, "a"])),
    st.tuples(st.just("pressure"), st.none()),
)
