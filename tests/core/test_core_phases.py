"""The resident's phase table (core/phases.py): legal moves land, illegal ones raise.

The expected moves are written here from lifecycle-spec.md's states, independently
of the table, so that a row added or lost in the table fails a test.
"""

from __future__ import annotations

from typing import get_args

import pytest
from core_world import BUSY_WAIT, DEBOUNCE, IDLE, World, run_step, step
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkeeperd.core import Lifecycle, LifecycleError, Settings, State
from lmkeeperd.core.phases import TRANSITIONS, Trigger, next_phase
from lmkeeperd.core.records import Resident

ID, LG, LD, S, U = State.IDLE, State.LOADING, State.LOADED, State.STREAMING, State.UNLOADING
TRIGGERS: tuple[Trigger, ...] = get_args(Trigger)

EXPECTED: dict[tuple[State, str], State] = {
    (ID, "load"): LG,
    (ID, "landed"): LD,  # a stray adopted (L22)
    (ID, "landed_in_use"): S,
    (LG, "load"): LG,  # a switch during a load (L5)
    (LG, "landed"): LD,
    (LG, "landed_in_use"): S,
    (LG, "load_failed"): ID,  # L6
    (LG, "dropped"): ID,  # unload command, exit
    (LD, "in_use"): S,  # L7, L19
    (LD, "unload"): U,
    (LD, "vanished"): ID,  # L18
    (LD, "parked"): ID,  # L24: stays loaded beside the next current model
    (S, "free"): LD,  # L9
    (S, "unload"): U,  # a forced switch (L20)
    (S, "vanished"): ID,
    (S, "parked"): ID,
    (U, "unloaded"): ID,  # L4, L11: ours no more, failed or not
    (U, "unload_deferred"): S,  # L20
    **{(phase, "hands_off"): ID for phase in State},  # L13
}


@pytest.mark.parametrize("phase", list(State))
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_every_phase_and_trigger_is_in_the_table_or_raises(phase: State, trigger: Trigger) -> None:
    want = EXPECTED.get((phase, trigger))
    if want is None:
        with pytest.raises(LifecycleError, match=f"{trigger!r} is not allowed in phase"):
            next_phase(phase, trigger)
    else:
        assert next_phase(phase, trigger) is want


def test_the_table_holds_no_row_beyond_the_expected_ones() -> None:
    rows = {(p, t): to for p, row in TRANSITIONS.items() for t, to in row.items()}
    assert rows == EXPECTED


def test_an_illegal_move_raises_and_changes_nothing() -> None:
    resident = Resident(model="a", instance="a:1", phase=State.LOADED, adopted=True)
    before = repr(resident)
    with pytest.raises(LifecycleError):
        resident.move("unloaded")
    assert repr(resident) == before


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TRIGGERS), max_size=40))
def test_random_trigger_sequences_follow_the_table(triggers: list[Trigger]) -> None:
    resident = Resident()
    for trigger in triggers:
        want = EXPECTED.get((resident.phase, trigger))
        before = resident.phase
        if want is None:
            with pytest.raises(LifecycleError):
                resident.move(trigger)
            assert resident.phase is before
        else:
            assert resident.move(trigger) is before
            assert resident.phase is want


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step, max_size=60), draft=st.sampled_from(["", "d"]))
def test_random_event_sequences_move_the_core_only_along_the_table(
    steps: list[tuple[str, object]], draft: str
) -> None:
    """The simulated world checks each `state_changed` against the table (core_world.py);
    here the core also never raises on a sequence a real driver could produce."""
    settings_ = Settings(
        switch_debounce=DEBOUNCE, idle_timeout=IDLE, draft_model=draft, busy_switch_wait=BUSY_WAIT
    )
    world = World(Lifecycle(settings_))
    for kind, arg in steps:
        run_step(world, kind, arg)
    assert world.core.state in TRANSITIONS
