"""Property tests of the lifecycle core's invariants over random event sequences.

The simulated world (tests/core_world.py) stands in for LM Studio and the driver
and asserts the invariants after every event.
"""

from __future__ import annotations

from core_world import BUSY_WAIT, DEBOUNCE, IDLE, MODELS, World, run_step, server_step, step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.core import (
    EngineChanged,
    Lifecycle,
    Select,
    ServerSnapshot,
    Settings,
    State,
    StreamEnded,
)


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
        Lifecycle(
            Settings(
                switch_debounce=DEBOUNCE,
                idle_timeout=IDLE,
                draft_model=draft,
                busy_switch_wait=BUSY_WAIT,
            )
        )
    )
    for kind, arg in steps:
        run_step(world, kind, arg)
    # Quiesce: close every stream, let LM Studio finish every generation, come back to
    # LM Studio, select, and let loads succeed.
    for stream in range(6):
        world.send(StreamEnded(stream))
    while world.busy:
        world.set_busy(0, on=False)
    world.set_source(True)
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
    # L22: once the reconcile reported what it finds and abandoned loads have landed,
    # nothing lmkeeperd started is left but the selected model and its draft (and what it
    # forgot on leaving LM Studio, L13).
    while world.abandoned:
        world.land_abandoned(0)
    world.reconcile_strays()
    world.settle()
    left = {i for v in world.server.values() for i in v} & world.ours
    keep = {core.instance_id} | ({core.draft[1]} if core.draft else set())
    assert left - keep <= world.forgotten, left - keep - world.forgotten
    assert core.state is State.LOADED and core.model == final


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=80))
def test_no_unload_ever_while_streaming_and_state_agrees(steps: list[tuple[str, object]]) -> None:
    world = World(
        Lifecycle(Settings(switch_debounce=DEBOUNCE, idle_timeout=IDLE, busy_switch_wait=BUSY_WAIT))
    )
    for kind, arg in steps:
        run_step(world, kind, arg)  # World.check asserts the invariants after every event
    assert world.core.loads_in_flight <= 1


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(server_step, min_size=20, max_size=60), draft=st.sampled_from(["", "d"]))
def test_L19_to_L22_invariants_hold_under_lm_studio_activity(
    steps: list[tuple[str, object]], draft: str
) -> None:
    settings_ = Settings(
        switch_debounce=DEBOUNCE, idle_timeout=IDLE, draft_model=draft, busy_switch_wait=BUSY_WAIT
    )
    world = World(Lifecycle(settings_))
    world.set_source(True)
    for kind, arg in steps:
        run_step(world, kind, arg)  # World.check asserts the invariants after every event
    for stream in range(2):
        world.send(StreamEnded(stream))
    while world.busy:
        world.set_busy(0, on=False)
    world.set_source(True)
    while world.abandoned:
        world.land_abandoned(0)
    world.reconcile_strays()
    world.send(Select("b"))
    world.settle()
    world.reconcile_strays()
    world.settle()
    core = world.core
    assert core.state is State.LOADED and core.model == "b"
    left = {i for v in world.server.values() for i in v} & world.ours
    keep = {core.instance_id} | ({core.draft[1]} if core.draft else set())
    assert left == keep & left, left - keep  # L22: nothing else of ours is left


# Several residents (L24-L28) need loads to land and time to pass between selections:
# an alphabet where they do, in sequences long enough to fill the residents.
resident_step = st.one_of(
    st.tuples(st.just("select"), st.sampled_from(MODELS)),
    st.tuples(st.just("select"), st.sampled_from(MODELS)),
    st.tuples(st.just("time"), st.sampled_from([0.31, 0.31, IDLE / 2, IDLE])),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("unload_ok"), st.integers(0, 3)),
    st.tuples(st.just("unload_ok"), st.integers(0, 3)),
    st.tuples(st.just("load_fail"), st.integers(0, 3)),
    st.tuples(st.just("stream_start"), st.integers(0, 1)),
    st.tuples(st.just("stream_end"), st.integers(0, 1)),
    st.tuples(st.just("busy"), st.integers(0, 5)),
    st.tuples(st.just("not_busy"), st.integers(0, 5)),
    st.tuples(st.just("abandon"), st.integers(0, 3)),
    st.tuples(st.just("land"), st.integers(0, 3)),
    st.tuples(st.just("snapshot"), st.booleans()),
    st.tuples(st.just("behind_unload"), st.sampled_from(MODELS)),
    st.tuples(st.just("unload_cmd"), st.sampled_from([None, *MODELS])),
    st.tuples(st.just("engine"), st.sampled_from(["lmstudio", "lmstudio", "ollama"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(resident_step, min_size=20, max_size=60),
    final=st.sampled_from(MODELS),
    pinned=st.booleans(),
)
def test_L24_L25_L28_invariants_hold_with_several_residents(
    steps: list[tuple[str, object]], final: str, pinned: bool
) -> None:
    settings_ = Settings(
        switch_debounce=0,  # switches at once: more of them land between the other steps
        idle_timeout=IDLE,
        busy_switch_wait=BUSY_WAIT,
        max_loaded=2,
        pinned=("c",) if pinned else (),
    )
    core = _play_then_quiet(World(Lifecycle(settings_)), steps, final)
    counted = {m for m in [core.model, *core.residents] if m not in core.settings.pinned}
    assert len(counted) <= 2 and core.model == final  # pinned do not count (L28)


# The memory budget, make-before-break, refusals, pinned loads and streams naming their
# model (L24-L28, L30), with settings drawn too.
admission_step = st.one_of(
    st.tuples(st.just("select"), st.sampled_from(MODELS)),
    st.tuples(st.just("select"), st.sampled_from(MODELS)),
    st.tuples(st.just("time"), st.sampled_from([0.31, 0.31, BUSY_WAIT, IDLE])),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("load_ok"), st.integers(0, 3)),
    st.tuples(st.just("refuse"), st.integers(0, 3)),
    st.tuples(st.just("unload_ok"), st.integers(0, 3)),
    st.tuples(st.just("unload_ok"), st.integers(0, 3)),
    st.tuples(st.just("stream_model"), st.tuples(st.integers(0, 1), st.sampled_from(MODELS))),
    st.tuples(st.just("stream_end"), st.integers(0, 1)),
    st.tuples(st.just("busy"), st.integers(0, 5)),
    st.tuples(st.just("not_busy"), st.integers(0, 5)),
    st.tuples(st.just("abandon"), st.integers(0, 3)),
    st.tuples(st.just("land"), st.integers(0, 3)),
    st.tuples(st.just("snapshot"), st.booleans()),
    st.tuples(st.just("behind_unload"), st.sampled_from(MODELS)),
    st.tuples(
        st.just("estimates"),
        st.lists(st.sampled_from([0.0, 4.0, 8.0, 30.0]), min_size=4, max_size=4),
    ),
    st.tuples(st.just("engine"), st.sampled_from(["lmstudio", "lmstudio", "ollama"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(admission_step, min_size=20, max_size=60),
    final=st.sampled_from(MODELS),
    max_loaded=st.integers(1, 3),
    switch=st.sampled_from(["auto", "make-before-break", "break-before-make"]),
    budget=st.sampled_from([None, 8.0, 16.0, 24.0]),
    pinned=st.sampled_from([(), ("c",)]),
)
def test_L25_to_L28_invariants_hold_with_budgets_refusals_and_pinned_models(
    steps: list[tuple[str, object]],
    final: str,
    max_loaded: int,
    switch: str,
    budget: float | None,
    pinned: tuple[str, ...],
) -> None:
    settings_ = Settings(
        switch_debounce=0,
        idle_timeout=IDLE,
        busy_switch_wait=BUSY_WAIT,
        max_loaded=max_loaded,
        switch=switch,
        budget_gb=budget,
        pinned=pinned,
    )
    core = _play_then_quiet(World(Lifecycle(settings_)), steps, final)
    counted = {m for m in [core.model, *core.residents] if m not in pinned}
    assert len(counted) <= max_loaded  # nothing in flight, nothing in use: within limits


def _play_then_quiet(world: World, steps: list[tuple[str, object]], final: str) -> Lifecycle:
    """Play `steps` (World.check asserts the invariants after every event), end every use,
    select `final` and let everything land: it is loaded, and nothing of ours is left
    behind but what the core holds (L22)."""
    for kind, arg in steps:
        run_step(world, kind, arg)
    for stream in range(6):
        world.send(StreamEnded(stream))
    while world.busy:
        world.set_busy(0, on=False)
    world.set_source(True)
    world.send(EngineChanged("lmstudio"))
    world.send(ServerSnapshot({k: tuple(v) for k, v in world.server.items() if v}))
    world.send(Select(final))
    world.settle()
    core = world.core
    assert core.state is State.LOADED and core.model == final
    assert core.instance_id in world.server.get(final, [])
    while world.abandoned:
        world.land_abandoned(0)
    world.reconcile_strays()
    world.settle()
    left = {i for v in world.server.values() for i in v} & world.ours
    keep = {core.instance_id} | set(core.residents.values())
    assert left - keep <= world.forgotten, left - keep - world.forgotten
    return core
