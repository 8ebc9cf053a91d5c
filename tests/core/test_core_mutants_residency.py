"""Several residents (L24-L28): what a refused load may evict, and what `status` says a
switch waits for while residents are in use.

Written against surviving mutants of residency.py and view.py (docs/testing.md,
"Mutation testing of the core"): each test checks an action, an event or a text a person
reads in `status`/`why` that the mutant changed."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import (
    EngineChanged,
    LoadFailed,
    ModelEstimates,
    OwnStray,
    Select,
    ServerActivity,
    ServerSnapshot,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
)

A, B, C, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b", "ibm/granite-8b"
DRAFT = "draft/tiny-0.5b"
REFUSED = "Failed to load model: insufficient system resources"


# --- L27: what a refused load may evict -------------------------------------------------


def test_L27_L28_a_refused_load_never_evicts_a_pinned_resident() -> None:
    h = Harness(switch_debounce=0, pinned=(C,))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    h.load_ok(pin)
    (load,) = h.loads(h.send(Select(A), at=1))
    out = h.load_err(load, REFUSED, refused=True)
    assert h.unloads(out) == [] and h.events("evicted", out) == []
    assert h.events("load_failed", out) == [{"model": A, "error": REFUSED, "draft": False}]
    assert h.core.residents == {C: C}


def test_L27_L19_a_refused_load_never_evicts_a_resident_lm_studio_is_busy_with() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))  # A stays beside B
    h.send(ServerActivity(A, True, "generating"), at=2)
    out = h.load_err(load, REFUSED, refused=True)
    assert h.unloads(out) == [] and h.events("evicted", out) == []
    assert h.events("load_failed", out) == [{"model": B, "error": REFUSED, "draft": False}]
    assert h.core.residents == {A: A}


def test_L27_L6_a_refused_load_fails_when_every_eviction_finds_its_resident_busy() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside B
    (load,) = h.loads(h.send(Select(C), at=2))  # B stays beside C
    (evict_a,) = h.unloads(h.load_err(load, REFUSED, refused=True))
    assert evict_a.model == A  # the least recently used first
    assert h.core.explain(2.5).cause == f"load refused: {REFUSED}"
    out = h.send(UnloadDeferred(evict_a.op, "generating"), at=3)  # L20: looked, busy
    (evict_b,) = h.unloads(out)  # the next idle resident instead
    assert evict_b.model == B and h.loads(out) == []
    out = h.send(UnloadDeferred(evict_b.op, "generating"), at=4)
    assert h.loads(out) == [] and h.unloads(out) == []  # nothing left to evict: L6
    assert h.events("load_failed", out) == [{"model": C, "error": REFUSED, "draft": False}]
    assert h.core.last_error == f"load of {C} failed: {REFUSED}"
    assert h.core.state is State.IDLE and h.core.explain(5).waiting_for is None
    out = h.send(ServerSnapshot({}, after_outage=True), at=6)  # a failed load is not retried
    assert h.loads(out) == []


def test_L6_L27_a_load_that_fails_for_another_reason_evicts_nothing() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))  # A stays beside B
    out = h.load_err(load, "model file is corrupt")  # not LM Studio's guardrail
    assert h.unloads(out) == [] and h.events("evicted", out) == []
    assert h.events("load_failed", out) == [
        {"model": B, "error": "model file is corrupt", "draft": False}
    ]
    assert h.core.residents == {A: A}
    out = h.send(ServerSnapshot({A: (A,)}, after_outage=True), at=3)
    assert h.loads(out) == []  # L6: a failed load is retried only by a new selection


# --- L25: what status says a switch waits for -----------------------------------------


def waiting_behind_two_streams() -> Harness:
    """C (pinned, never evicted) current; A and B beside it, each in use by a stream; D
    selected: it waits for room."""
    h = Harness(switch_debounce=0, max_loaded=2, busy_switch_wait=30, pinned=(C,))
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.loaded(C, at=2)  # pinned: does not count against max_loaded 2
    h.send(StreamStarted(1, A), at=3)
    h.send(StreamStarted(2, B), at=3)
    assert h.loads(h.send(Select(D), at=4)) == [] and h.unloads() == []
    return h


def test_L25_status_names_the_residents_in_use_a_switch_waits_for() -> None:
    h = waiting_behind_two_streams()
    why = h.core.explain(5)
    assert (why.waiting_for, why.waiting_until) == (f"{A}, {B} to be idle to make room for {D}", 34)


def test_L25_a_switch_waiting_for_room_goes_on_once_those_in_use_are_gone() -> None:
    h = waiting_behind_two_streams()
    out = h.send(ServerSnapshot({C: (C,)}), at=5)  # A and B unloaded by hand (L18)
    assert [a.model for a in h.loads(out)] == [D]  # the room is there: no wait till 34
    assert h.core.explain(6).waiting_for == "load in flight"


# --- L22, L28: which strays of ours are kept as residents ------------------------------


def test_L22_L15_a_stray_of_the_draft_model_is_unloaded_never_kept_as_a_resident() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, draft_model=DRAFT)
    h.loaded(A, at=0)
    h.load_ok(h.loads()[-1], "d-1")  # the draft goes with A (L15)
    out = h.send(OwnStray(DRAFT, "d-old"), at=1)  # room for a resident, but it is the draft
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("d-old", "stray")]
    assert h.core.residents == {} and h.core.draft == (DRAFT, "d-1")


def test_L22_L5_a_stray_of_a_model_whose_superseded_load_is_in_flight_is_unloaded() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.send(Select(A), at=0)
    h.send(UnloadCommand(1), at=1)  # A's load is superseded (L5): it still runs
    out = h.send(OwnStray(A, "A-old"), at=2)  # never a second instance of a model loading
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-old", "stray")]
    assert h.core.residents == {}


def test_L22_L30_a_stray_is_not_kept_when_a_load_in_flight_and_a_queued_one_fill_it() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    h.loaded(A, at=0)
    assert h.loads(h.send(Select(B), at=1))  # B loads beside A
    h.send(Select(C), at=2)  # queued behind B's load (L30)
    out = h.send(OwnStray(D, "D-j"), at=3)  # A, B and C take max_loaded 3
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("D-j", "stray")]
    assert h.core.residents == {A: A}


def test_L22_L30_a_stray_is_not_kept_when_a_load_in_flight_takes_the_budget() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, budget_gb=10, pinned=(B,))
    h.send(ModelEstimates({B: 6, C: 6}))
    assert h.loads(h.send(ServerSnapshot({}), at=0))  # B's pinned load counts (L30)
    out = h.send(OwnStray(C, "C-j"), at=1)  # 6 + 6 GB: over the 10 GB budget
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("C-j", "stray")]


def test_L22_L28_a_stray_kept_beside_nothing_says_so_and_was_used_now() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.send(StreamStarted(1), at=1)
    h.send(StreamEnded(1), at=2)  # nothing loaded: that use was nobody's
    out = h.send(OwnStray(C, "C-j"), at=5)
    assert h.events("stray_adopted", out) == [{"model": C, "instance_id": "C-j", "resident": True}]
    (view,) = h.core.residents_view()
    assert (view.model, view.last_used) == (C, 5)


def test_L22_L25_a_stray_kept_at_the_current_models_last_use_goes_before_it() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    late = "zyphra/zamba2-7b"  # after A by name: the order would pick A on a tie
    h.loaded(A, at=5)
    h.send(OwnStray(late, "Z-j"), at=5)  # kept, used just before A
    out = h.send(Select(C), at=6)  # room for C: the least recently used goes
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(late, "switch")]
    assert h.core.model == C and h.core.residents == {A: A}


def test_L22_L30_an_abandoned_load_that_lands_as_a_stray_counts_once() -> None:
    h = Harness(switch_debounce=0)
    h.send(ModelEstimates({B: 6}))
    (load,) = h.loads(h.send(Select(B), at=0))
    h.send(LoadFailed(load.op, "timed out", abandoned=True), at=1)  # it may still land
    assert h.core.budget_used_gb() == 6
    out = h.send(OwnStray(B, "B-late"), at=2)  # it landed: still wanted, adopted
    assert h.events("stray_adopted", out) == [{"model": B, "instance_id": "B-late"}]
    assert h.core.model == B and h.core.budget_used_gb() == 6


def test_L27_L13_a_refusal_waiting_for_its_eviction_is_forgotten_once_it_is_done() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))  # A stays beside B
    (evict,) = h.unloads(h.load_err(load, REFUSED, refused=True))
    assert "LM Studio refused" in str(h.core.explain(2).waiting_for)
    h.send(EngineChanged("ollama"), at=3)  # L13: no retry on another engine
    out = h.unload_ok(evict)
    assert h.loads(out) == [] and h.core.explain(4).waiting_for is None


def test_L22_L30_a_stray_adopted_while_its_selection_waited_for_a_load_is_not_pending() -> None:
    h = Harness(switch_debounce=0)
    h.send(Select(A), at=0)
    h.send(UnloadCommand(1), at=1)  # A's load superseded (L5): it still runs
    h.send(Select(B), at=2)  # waits for that load (L30)
    assert h.core.pending == B
    out = h.send(OwnStray(B, "B-j"), at=3)  # B turns up: ours, adopted
    assert h.events("stray_adopted", out) == [{"model": B, "instance_id": "B-j"}]
    assert (h.core.model, h.core.instance_id, h.core.pending) == (B, "B-j", None)
    assert h.core.adopted is False  # lmkeeperd started it


def test_L28_L9_a_stream_on_a_resident_ending_is_not_the_current_models_use() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside B; B's last use is 1
    h.send(StreamStarted(1, A), at=5)
    h.send(StreamEnded(1), at=6)
    views = {v.model: v for v in h.core.residents_view()}
    assert (views[B].last_used, views[A].last_used) == (1, 6)
