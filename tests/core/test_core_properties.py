"""Property tests of the lifecycle core's invariants over random event sequences.

A small simulated server stands in for LM Studio and a simulated driver
performs the core's actions the way lmkeeperd's real driver does (adopting an
existing instance instead of loading a second one). Loads and unloads may
succeed, fail, or stay outstanding ("never returning") for as long as the
sequence runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.core import (
    Action,
    Activity,
    CancelLoad,
    EngineChanged,
    Event,
    Lifecycle,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    ResumeLoad,
    Select,
    ServerSnapshot,
    Settings,
    StartLoad,
    StartUnload,
    State,
    StreamEnded,
    StreamStarted,
    Tick,
    UnloadCommand,
    UnloadFailed,
    UnloadFinished,
)

MODELS = ["a", "b", "c", "d"]
DEBOUNCE = 0.3
IDLE = 50.0


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
    counter: int = 0
    request: int = 0

    def send(self, event: Event) -> None:
        out = self.core.handle(event, self.now)
        self.check(out)
        self.perform(out)

    def check(self, out: list[Action]) -> None:
        core = self.core
        for action in out:
            if isinstance(action, StartUnload):
                assert core.active_streams == 0, "unload emitted while a stream is open"
        assert core.loads_in_flight <= 1, "more than one load in flight"
        assert (core.state is State.IDLE) == (core.model is None), (core.state, core.model)
        if core.state in (State.LOADED, State.STREAMING):
            assert core.instance_id is not None
            assert (core.state is State.STREAMING) == (core.active_streams > 0)

    def perform(self, out: list[Action]) -> None:
        for action in out:
            if isinstance(action, StartLoad):
                # Like the real driver: look at the server when the load starts and
                # adopt an instance that is not on its way out.
                present = [i for i in self.server.get(action.model, []) if i not in action.avoid]
                self.loads[action.op] = action
                self.adopt[action.op] = present[0] if present else None
                same = [a for a in self.loads.values() if a.model == action.model and not a.draft]
                assert len(same) <= 1, f"two loads of {action.model} in flight: two instances"
            elif isinstance(action, StartUnload):
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
        if ok:
            instances = self.server.get(action.model, [])
            if action.instance_id in instances:
                instances.remove(action.instance_id)
            self.send(UnloadFinished(op))
        else:
            self.unload_failed.add(action.instance_id)
            self.send(UnloadFailed(op, "failed"))

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


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, max_size=60),
    final=st.sampled_from(MODELS),
    draft=st.sampled_from(["", "d"]),
)
def test_invariants_hold_and_last_selection_wins(
    steps: list[tuple[str, object]], final: str, draft: str
) -> None:
    world = World(
        Lifecycle(Settings(switch_debounce=DEBOUNCE, idle_timeout=IDLE, draft_model=draft))
    )
    for kind, arg in steps:
        run_step(world, kind, arg)
    # Quiesce: close every stream, come back to LM Studio, select, and let loads succeed.
    for stream in range(6):
        world.send(StreamEnded(stream))
    world.send(EngineChanged("lmstudio"))
    world.send(ServerSnapshot({k: tuple(v) for k, v in world.server.items() if v}))
    world.send(Select(final))
    world.settle()
    core = world.core
    assert core.state is State.LOADED and core.model == final
    assert core.instance_id in world.server.get(final, [])
    # L5: every load that finished after being superseded was followed by its unload.
    assert world.strays <= world.unload_targets, world.strays - world.unload_targets
    # And no stray is left on the server unless the server refused its unload.
    keep = {core.instance_id} | ({core.draft[1]} if core.draft else set())
    left = {i for v in world.server.values() for i in v} & world.ours
    assert world.strays & (left - keep) <= world.unload_failed


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=80))
def test_no_unload_ever_while_streaming_and_state_agrees(steps: list[tuple[str, object]]) -> None:
    world = World(Lifecycle(Settings(switch_debounce=DEBOUNCE, idle_timeout=IDLE)))
    for kind, arg in steps:
        run_step(world, kind, arg)  # World.check asserts the invariants after every event
    assert world.core.loads_in_flight <= 1
