"""The read-only view and `explain` (status), and a resident selected again (L24).

Written against surviving mutants of view.py and records.py (docs/testing.md, "Mutation
testing of the core"): each test checks a field a person reads in `status`/`why`, or
what a promoted resident keeps."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import (
    ActivitySource,
    LoadFinished,
    OwnStray,
    Select,
    ServerActivity,
    ServerSnapshot,
    Shutdown,
    StreamStarted,
)

A, B, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "draft/tiny-0.5b"


def test_L10_idle_eject_in_counts_down_to_zero_and_stays_there() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    assert h.core.idle_eject_in(9.5) == 0.5
    assert h.core.idle_eject_in(10.5) == 0.0  # overdue until the next tick


def test_explain_names_the_model_its_keep_alive_and_idle_time() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.send(Select(A, keep_alive=60), at=0)
    h.load_ok(h.loads()[0])
    why = h.core.explain(1)
    assert (why.state, why.model, why.keep_alive, why.idle_eject_at) == ("loaded", A, 60, 60)
    assert (why.in_flight, why.in_flight_since, why.in_flight_s) == (None, None, None)
    assert why.deferred_unloads == 0


def test_explain_counts_deferred_unloads() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(OwnStray(B, "B-old"), at=2)  # L22: a stray of ours, unloaded once streams end
    assert h.core.explain(2).deferred_unloads == 1


def test_explain_in_flight_seconds_are_rounded_to_milliseconds() -> None:
    h = Harness(switch_debounce=0)
    h.send(Select(A), at=0.0)
    why = h.core.explain(1.23456)
    assert (why.in_flight, why.in_flight_since, why.in_flight_s) == ("load", 0.0, 1.235)


def test_L4_explain_waits_for_the_unload_in_flight_of_a_switch() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(Select(B), at=1)
    why = h.core.explain(2)
    assert (why.state, why.waiting_for, why.waiting_until) == (
        "unloading",
        "unload in flight",
        None,
    )


def test_L24_L15_a_resident_selected_again_keeps_the_current_draft() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, draft_model=D)
    h.loaded(A)
    h.load_ok(h.loads()[-1], "d-1")  # the draft D goes with the current model
    (load_b,) = h.loads(h.send(Select(B), at=1))  # A stays resident beside B
    h.load_ok(load_b)
    h.send(Select(A), at=3)  # A is current again: nothing loads (L24)
    assert h.core.model == A and h.core.draft == (D, "d-1")


def test_L24_L15_a_resident_selected_again_keeps_the_draft_load_in_flight() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, draft_model=D)
    h.loaded(A)
    draft = h.loads()[-1]  # D's load is in flight (L15); B waits for it (L30)
    h.send(Select(B), at=1)
    h.send(Select(A), at=2)  # A promoted again
    assert h.core.model == A
    assert [c.op for c in h.cancels(h.send(Shutdown(), at=3))] == [draft.op]


def test_L24_L17_a_resident_selected_again_is_restored_after_an_outage() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A)
    h.load_ok(h.loads(h.send(Select(B), at=1))[0])
    h.send(Select(A), at=2)  # A current again (L24)
    assert h.core.model == A
    out = h.send(ServerSnapshot({}, after_outage=True), at=3)  # the server restarted
    assert [load.model for load in h.loads(out)] == [A]


def test_L24_L19_a_busy_resident_selected_again_is_in_use_at_once() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A)
    h.load_ok(h.loads(h.send(Select(B), at=1))[0])
    h.send(ServerActivity(A, True, "generating"), at=2)  # a client of LM Studio uses A
    h.send(Select(A), at=3)
    why = h.core.explain(4)
    assert (why.state, why.model, why.cause) == ("streaming", A, "resident selected")


def test_L1_a_finished_load_says_how_long_it_took_to_the_millisecond_and_why() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A), at=1.0))
    out = h.send(LoadFinished(load.op, A), at=2.23456)
    assert h.events("load_finished", out) == [
        {"model": A, "seconds": 1.235, "adopted": False, "draft": False}
    ]
    why = h.core.explain(3)
    assert (why.state, why.cause, why.cause_at) == ("loaded", "loaded", 2.23456)


def test_L17_a_load_that_found_the_model_loaded_says_adopted() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A), at=1))
    out = h.send(LoadFinished(load.op, "A-gui", adopted=True), at=2)
    assert h.events("load_finished", out)[0]["adopted"] is True
    why = h.core.explain(3)
    assert (why.state, why.cause, h.core.adopted) == ("loaded", "adopted", True)


def test_L24_L28_the_residents_view_shows_instance_state_use_and_a_pinned_load() -> None:
    pinned = "google/gemma-3-12b"
    h = Harness(switch_debounce=0, max_loaded=2, pinned=(pinned,))
    h.loaded(A, at=0)  # before the first look at the server
    h.load_ok(h.loads(h.send(Select(B), at=1))[0], "B-1")  # A stays beside B
    assert h.loads(h.send(ServerSnapshot({A: (A,), B: ("B-1",)}), at=2))  # the pinned load
    h.send(ServerActivity(A, True, "generating"), at=3)  # LM Studio busy with A
    h.send(StreamStarted(1), at=3)  # a client streams from the current model B
    views = [
        (v.model, v.instance_id, v.state, v.current, v.busy, v.streams)
        for v in h.core.residents_view()
    ]
    assert views == [
        (B, "B-1", "loaded", True, False, 1),  # streaming, shown as loaded
        (A, A, "loaded", False, True, 0),
        (pinned, None, "loading", False, False, 0),
    ]


def test_L21_losing_lm_studios_activity_frees_a_busy_model_and_says_why() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(ServerActivity(A, True, "generating"), at=1)
    assert h.core.explain(2).state == "streaming"
    h.send(ActivitySource(False, "channel down"), at=3)  # stale busy flags never block (L21)
    why = h.core.explain(4)
    assert (why.state, why.cause, why.cause_at) == ("loaded", "activity source lost", 3)
