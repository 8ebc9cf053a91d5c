"""Selecting and switching (L1-L6), one test or more per rule, named with its id.

Times are explicit. Streams, idleness, engines and the server: test_core_rules.py."""

from __future__ import annotations

import pytest
from core_harness import Harness, of_type

from lmkeeperd.core import (
    LoadFinished,
    OwnStray,
    ResumeLoad,
    Select,
    Settings,
    SettingsChanged,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
)

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b"


# --- L1 ----------------------------------------------------------------------


def test_L1_selection_loads_when_auto_load_on() -> None:
    h = Harness(switch_debounce=0)
    out = h.send(Select(A))
    assert [(a.model, a.draft) for a in h.loads(out)] == [(A, False)]
    assert h.core.state is State.LOADING and h.core.model == A


def test_L1_keys_are_trimmed_and_empty_ignored() -> None:
    h = Harness(switch_debounce=0)
    assert h.send(Select("   ")) == []
    assert h.core.selected is None
    out = h.send(Select(f"  {A}\n"))
    assert [a.model for a in h.loads(out)] == [A]
    assert h.core.selected == A


def test_L1_auto_load_off_records_selection_and_loads_nothing() -> None:
    h = Harness(switch_debounce=0, auto_load=False)
    assert h.send(Select(A)) == []
    h.advance(10)
    assert h.loads() == []
    assert h.core.selected == A and h.core.state is State.IDLE


# --- L2 ----------------------------------------------------------------------


def test_L2_reselecting_loaded_model_does_not_reload_and_refreshes_idle_timer() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    h.loaded(A, at=0)
    assert h.core.idle_eject_in(50) == pytest.approx(50)
    h.send(Select(A), at=50)
    assert len(h.loads()) == 1
    assert h.core.idle_eject_in(50) == pytest.approx(100)


def test_L2_reselecting_loading_model_does_not_start_second_load() -> None:
    h = Harness(switch_debounce=0)
    h.send(Select(A))
    h.send(Select(A), at=1)
    assert len(h.loads()) == 1 and h.core.state is State.LOADING


# --- L3 ----------------------------------------------------------------------


def test_L3_burst_inside_debounce_gives_one_switch_to_last_model() -> None:
    h = Harness(switch_debounce=0.3)
    for i, model in enumerate([A, B, C, B, A, C]):
        out = h.send(Select(model), at=i * 0.1)
        assert h.loads(out) == [] and h.unloads(out) == []
    assert h.tick(0.5 + 0.29) == []  # last selection at 0.5, window not over yet
    out = h.tick(0.8)
    assert [a.model for a in h.loads(out)] == [C]
    assert h.core.next_deadline() is None


def test_L3_deadline_is_exposed_for_the_driver() -> None:
    h = Harness(switch_debounce=0.3)
    h.send(Select(A), at=10)
    assert h.core.next_deadline() == pytest.approx(10.3)
    assert h.core.pending == A


def test_L3_zero_debounce_switches_at_once() -> None:
    h = Harness(switch_debounce=0)
    assert [a.model for a in h.loads(h.send(Select(A), at=5))] == [A]


def test_L3_selecting_back_the_current_model_inside_window_cancels_switch() -> None:
    h = Harness(switch_debounce=0.3)
    h.loaded(A)
    h.send(Select(B), at=1.0)
    h.send(Select(A), at=1.1)
    h.tick(5)
    assert len(h.loads()) == 1 and h.unloads() == []


# --- L4 ----------------------------------------------------------------------


def test_L4_switch_unloads_ours_first_then_loads_new() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    out = h.send(Select(B), at=1)
    assert h.loads(out) == []
    (unload,) = h.unloads(out)
    assert (unload.model, unload.reason) == (A, "switch")
    assert h.core.state is State.UNLOADING
    out = h.unload_ok(unload)
    assert [a.model for a in h.loads(out)] == [B]
    assert h.events("unloaded", out) == [{"model": A, "reason": "switch"}]


def test_L4_failed_unload_is_reported_and_load_goes_ahead() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(Select(B), at=1))
    out = h.unload_err(unload, "server said no")
    assert [a.model for a in h.loads(out)] == [B]
    assert h.events("unload_failed", out)[0]["error"] == "server said no"


# --- L5 ----------------------------------------------------------------------


def test_L5_a_load_given_up_is_cancelled_and_its_late_failure_ignored() -> None:
    # L30: a newer selection no longer gives a load up (it waits for it); a command does.
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    out = h.send(UnloadCommand(1), at=1)
    assert [c.op for c in h.cancels(out)] == [first.op]
    # The old load fails late: nothing changes.
    assert h.load_err(first, "late") == []
    assert h.core.model is None and h.core.state is State.IDLE


def test_L5_superseded_load_that_finished_is_unloaded() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=1)
    out = h.send(LoadFinished(first.op, "stray-A"))
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [
        (A, "stray-A", "superseded")
    ]
    assert h.core.model is None and h.core.state is State.IDLE


def test_L5_switching_back_during_a_slow_load_waits_for_it_instead_of_loading_twice() -> None:
    # Found by the chaos soak (tests/daemon/test_e2e_soak.py): A, B, A while A's load runs put two
    # loads of A in flight, and two instances of A on the server when both finished.
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    assert h.loads(h.send(Select(B), at=1)) == []  # L30: B waits for A's load
    out = h.send(Select(A), at=2)
    assert h.loads(out) == [] and h.cancels() == []  # no second load of A, none given up
    assert h.core.model == A and h.core.state is State.LOADING and h.core.pending is None
    out = h.load_ok(first, "A")
    assert (h.core.state, h.core.instance_id) == (State.LOADED, "A")
    assert h.unloads(out) == [] and h.loads(out) == []  # B's switch is gone with it


def test_L5_selecting_again_a_model_whose_load_was_given_up_resumes_that_load() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=1)  # superseded: still running on the server
    out = h.send(Select(A), at=2)
    assert h.loads(out) == []  # no second load of A
    assert [r.op for r in of_type(out, ResumeLoad)] == [first.op]
    assert h.core.model == A and h.core.state is State.LOADING
    out = h.load_ok(first, "A")
    assert (h.core.state, h.core.instance_id) == (State.LOADED, "A")
    assert h.unloads(out) == []  # the resumed load is ours, not a stray


def test_L5_a_stray_waiting_on_a_stream_is_adopted_when_its_model_is_wanted_again() -> None:
    # Found by the chaos soak: A's stray, deferred behind a stream (L7), sat beside a second
    # instance of A loaded when A was selected again.
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=0.5)  # its load superseded (L5)
    h.send(StreamStarted(1), at=0.6)
    assert h.unloads(h.send(LoadFinished(first.op, "A"))) == []  # deferred: a stream is open
    (again,) = h.loads(h.send(Select(A), at=2))
    assert "A" not in again.avoid  # the stray may be adopted
    h.send(LoadFinished(again.op, "A", adopted=True))
    assert (h.core.model, h.core.instance_id) == (A, "A")
    out = h.send(StreamEnded(1))
    assert "A" not in [u.instance_id for u in h.unloads(out)]  # kept: it is the model now


def test_L5_a_superseded_load_with_other_load_settings_is_not_resumed() -> None:
    h = Harness(switch_debounce=0, load_config={"context_length": 4096})
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=1)
    h.send(SettingsChanged(Settings(switch_debounce=0, load_config={"context_length": 8192})))
    out = h.send(Select(A), at=2)
    assert h.loads(out) == [] and of_type(out, ResumeLoad) == []  # L30: the old one lands first
    out = h.send(LoadFinished(first.op, "A-old"), at=3)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-old", "superseded")]
    (again,) = h.loads(out)
    assert again.op != first.op and again.load_config == {"context_length": 8192}
    assert again.avoid == ("A-old",)


# --- L6 ----------------------------------------------------------------------


def test_L6_failed_load_returns_to_idle_reports_and_retries_on_reselect() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A)))
    out = h.load_err(load, "model crashed: out of memory")
    assert h.core.state is State.IDLE and h.core.model is None
    assert h.events("load_failed", out) == [
        {"model": A, "error": "model crashed: out of memory", "draft": False}
    ]
    assert h.core.last_error is not None and "out of memory" in h.core.last_error
    assert [a.model for a in h.loads(h.send(Select(A), at=2))] == [A]


# --- L30 ---------------------------------------------------------------------

WAIT_FOR_A = f"the load of {A} to finish: LM Studio cannot cancel a load"


def test_L30_a_switch_during_a_load_waits_for_it_to_land_then_unloads_it() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    out = h.send(Select(B), at=1)
    assert h.loads(out) == [] and h.cancels(out) == []  # one load at a time, none cancelled
    assert h.core.pending == B and h.core.model == A
    assert h.core.explain(2).waiting_for == WAIT_FOR_A
    out = h.load_ok(first, "A")
    # A landed: a resident like any other, so the switch unloads it first (L4).
    assert h.loads(out) == []
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A", "switch")]
    assert h.core.state is State.UNLOADING and h.core.pending == B
    (unload,) = h.unloads(out)
    (to_b,) = h.loads(h.unload_ok(unload))
    assert to_b.model == B and h.core.model == B and h.core.state is State.LOADING


def test_L30_the_latest_selection_made_during_a_load_wins() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(Select(B), at=1)
    out = h.send(Select(C), at=2)
    assert h.events("selection_superseded", out) == [{"model": B, "by": C}]
    assert h.core.pending == C
    (unload,) = h.unloads(h.load_ok(first, "A"))
    (load,) = h.loads(h.unload_ok(unload))
    assert load.model == C and len(h.loads()) == 2


def test_L30_a_failed_load_lets_the_waiting_selection_load_at_once() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(Select(B), at=1)
    out = h.load_err(first, "no memory")
    assert [a.model for a in h.loads(out)] == [B] and h.unloads(out) == []
    assert h.core.model == B and h.core.state is State.LOADING


def test_L30_a_landed_model_in_use_stays_until_its_stream_ends() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(StreamStarted(1), at=0.5)
    h.send(Select(B), at=1)
    out = h.load_ok(first, "A")
    assert h.core.state is State.STREAMING and h.unloads(out) == []  # L7
    assert h.core.pending == B
    out = h.send(StreamEnded(1), at=3)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A", "switch")]


def test_L30_an_abandoned_load_stops_blocking_and_is_collected_when_it_lands() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(Select(B), at=1)
    out = h.load_err(first, "timed out", abandoned=True)  # load_timeout (L22)
    assert [a.model for a in h.loads(out)] == [B]
    (to_b,) = h.loads(out)
    h.load_ok(to_b, "B")
    out = h.send(OwnStray(A, "A-late"), at=9)  # it landed after all: not wanted
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-late", "stray")]
    assert (h.core.model, h.core.state) == (B, State.LOADED)


def test_L30_a_draft_load_in_flight_holds_the_next_main_load() -> None:
    h = Harness(switch_debounce=0, draft_model=C)
    h.loaded(A)
    (draft,) = [a for a in h.loads() if a.draft]
    out = h.send(Select(B), at=1)
    assert [c.op for c in h.cancels(out)] == [draft.op]  # L15: the draft goes with A
    (unload,) = h.unloads(out)
    assert h.loads(h.unload_ok(unload)) == []  # the draft's load still runs on the server
    assert h.core.explain(2).waiting_for == (
        f"the load of {C} to finish: LM Studio cannot cancel a load"
    )
    out = h.load_ok(draft, "C")
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("C", "superseded")]
    assert [(a.model, a.draft) for a in h.loads(out)] == [(B, False)]


def test_L30_no_draft_is_loaded_for_a_model_a_waiting_switch_unloads() -> None:
    h = Harness(switch_debounce=0, draft_model=C)
    (first,) = h.loads(h.send(Select(A)))
    h.send(Select(B), at=1)
    out = h.load_ok(first, "A")
    assert h.loads(out) == [] and [u.reason for u in h.unloads(out)] == ["switch"]


def test_L30_a_newer_selection_replaces_one_waiting_for_a_given_up_load() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=1)  # given up (L5), still running on the server
    assert h.loads(h.send(Select(B), at=2)) == []
    assert (h.core.state, h.core.pending) == (State.IDLE, B)
    assert h.core.explain(3).waiting_for == WAIT_FOR_A
    out = h.send(Select(A), at=4)
    assert [r.op for r in of_type(out, ResumeLoad)] == [first.op]
    assert h.events("selection_superseded", out) == [{"model": B, "by": A}]
    assert h.core.pending is None
    out = h.load_ok(first, "A")
    assert (h.core.model, h.core.state) == (A, State.LOADED)
    assert h.unloads(out) == [] and h.loads(out) == []  # B is not switched to afterwards
