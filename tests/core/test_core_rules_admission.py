"""The memory budget, make-before-break, refused loads and pinned loads (L24-L28).

Times are explicit. `test_core_rules_residency.py` has the count-only residency rules.
"""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Activity,
    EngineChanged,
    LoadFinished,
    ModelEstimates,
    Select,
    ServerActivity,
    ServerSnapshot,
    Settings,
    State,
    StreamEnded,
    StreamStarted,
)
from lmkeeperd.core.thrash import ThrashWatch

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b"
D = "openai/gpt-oss-20b"
REFUSED = "Failed to load model: insufficient system resources"


def moves(h: Harness, out: list[object]) -> list[tuple[str, str]]:
    """("load", model) and ("unload", model) in the order the core asked for them."""
    loads = [("load", a.model) for a in h.loads(out)]  # type: ignore[arg-type]
    unloads = [("unload", u.model) for u in h.unloads(out)]  # type: ignore[arg-type]
    return unloads + loads


# --- L25: the memory budget ----------------------------------------------------------


def test_L25_the_budget_evicts_the_least_recently_used_idle_resident() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, budget_gb=20, switch="break-before-make")
    h.send(ModelEstimates({A: 8, B: 8, C: 8}))
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # 16 GB: both fit
    h.send(Activity(), at=2)  # B used last
    assert h.core.budget_used_gb() == pytest.approx(16)
    out = h.send(Select(C), at=3)  # 24 GB would not fit: A, used least recently, goes
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "budget", "for": C}
    ]
    assert moves(h, out) == [("unload", A), ("load", C)]
    # A holds its memory until its unload is done: 24 GB (B, C loading, A leaving).
    assert h.core.residents == {B: B} and h.core.budget_used_gb() == pytest.approx(24)
    h.unload_ok(h.unloads(out)[0])
    assert h.core.budget_used_gb() == pytest.approx(16)
    views = {v.model: v for v in h.core.residents_view()}
    assert (views[C].state, views[C].current, views[C].estimate_gb) == ("loading", True, 8)
    assert (views[B].state, views[B].current, views[B].pinned) == ("loaded", False, False)


def test_L25_a_model_too_big_even_alone_is_loaded_after_every_idle_resident_went() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, budget_gb=10, switch="break-before-make")
    h.send(ModelEstimates({A: 4, C: 12}))
    h.loaded(A, at=0)
    out = h.send(Select(C), at=1)
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "budget", "for": C}
    ]
    (unload,) = h.unloads(out)
    assert h.loads(out) == []  # L4: the current model is unloaded first
    assert [a.model for a in h.loads(h.unload_ok(unload))] == [C]  # loaded all the same


def test_L25_the_count_evicts_with_reason_max_loaded() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.send(Activity(), at=2)
    out = h.send(Select(C), at=3)
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "max_loaded", "for": C}
    ]


def test_L25_a_switch_waits_for_busy_residents_at_most_busy_switch_wait() -> None:
    h = Harness(switch_debounce=0, pinned=(B,), busy_switch_wait=30)  # B does not count
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside the pinned B
    h.send(ServerActivity(A, True, "generating", 0, 2), at=2)
    out = h.send(Select(C), at=3)
    assert moves(h, out) == [] and h.core.pending == C
    why = h.core.explain(4)
    assert why.waiting_for == f"{A} to be idle to make room for {C}"
    assert why.waiting_until == pytest.approx(33) and h.core.next_deadline() == 33
    out = h.tick(33)  # waited long enough: C loads beside the busy A, which stays
    assert moves(h, out) == [("load", C)]
    (load,) = h.loads(out)
    assert h.unloads(h.load_ok(load)) == []  # A still busy: never evicted
    assert set(h.core.residents) == {A, B} and h.core.model == C
    out = h.send(ServerActivity(A, False, "idle", 0, 40), at=40)  # now it can go
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "max_loaded", "for": C}
    ]
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]
    assert h.core.residents == {B: B}


# --- L26: make-before-break ----------------------------------------------------------


def test_L26_make_before_break_loads_the_new_model_before_the_old_one_goes() -> None:
    h = Harness(switch_debounce=0, switch="make-before-break")
    h.loaded(A, at=0)
    out = h.send(Select(B), at=1)
    assert moves(h, out) == [("load", B)]  # the new one first; A keeps serving
    assert h.core.residents == {A: A} and (h.core.model, h.core.state) == (B, State.LOADING)
    (load,) = h.loads(out)
    out = h.load_ok(load)
    assert moves(h, out) == [("unload", A)]  # then the old one goes
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "max_loaded", "for": B}
    ]
    assert h.core.residents == {} and (h.core.model, h.core.state) == (B, State.LOADED)


def test_L26_the_old_model_keeps_its_stream_while_the_new_one_loads() -> None:
    h = Harness(switch_debounce=0, switch="make-before-break")
    h.loaded(A, at=0)
    h.send(StreamStarted(1, A), at=1)
    out = h.send(Select(B), at=2)  # not queued behind the stream (L7): nothing unloads
    assert moves(h, out) == [("load", B)]
    (load,) = h.loads(out)
    assert h.unloads(h.load_ok(load)) == []  # L7: A goes only once its stream ended
    assert h.core.residents == {A: A}
    out = h.send(StreamEnded(1), at=5)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]
    assert (h.core.model, h.core.state) == (B, State.LOADED)


def test_L26_auto_makes_before_it_breaks_only_when_both_fit_the_budget() -> None:
    h = Harness(switch_debounce=0, budget_gb=20)  # switch = "auto"
    h.send(ModelEstimates({A: 8, B: 8, C: 16}))
    h.loaded(A, at=0)
    out = h.send(Select(B), at=1)  # 16 GB: they fit together
    assert moves(h, out) == [("load", B)]
    (load,) = h.loads(out)
    out = h.load_ok(load)
    assert moves(h, out) == [("unload", A)]
    h.unload_ok(h.unloads(out)[0])
    out = h.send(Select(C), at=2)  # 24 GB: they do not; L4's order
    assert moves(h, out) == [("unload", B)] and h.core.pending == C


def test_L25_a_load_waits_for_an_unload_in_flight_to_free_its_memory() -> None:
    h = Harness(switch_debounce=0, budget_gb=20)  # switch = "auto"
    h.send(ModelEstimates({A: 8, B: 8, C: 16}))
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))  # make-before-break: 16 GB fit
    (a_unload,) = h.unloads(h.load_ok(load))  # A goes once B landed
    assert h.core.budget_used_gb() == pytest.approx(16)  # A holds its memory until gone
    out = h.send(Select(C), at=2)  # B must go for C, and A is not gone yet: 8 + 16 > 20
    assert moves(h, out) == [] and h.core.pending == C
    out = h.unload_ok(a_unload)  # A gone: now there is room once B goes (L4's order)
    assert moves(h, out) == [("unload", B)]
    (b_unload,) = h.unloads(out)
    assert moves(h, h.unload_ok(b_unload)) == [("load", C)]


def test_L25_L7_a_load_waits_while_the_resident_evicted_for_it_stays_for_a_stream() -> None:
    h = Harness(switch_debounce=0, max_loaded=4, budget_gb=20, switch="break-before-make")
    h.send(ModelEstimates({A: 6, B: 6, C: 6, D: 6}))
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.loaded(D, at=2)  # current; A, used least recently, is the one to go for C
    h.send(StreamStarted(1, B), at=3)  # L7: nothing is unloaded while it is open
    out = h.send(Select(C), at=4)  # A would stay until the stream ends: 24 GB > 20
    assert moves(h, out) == [] and h.events("evicted", out) == []
    assert h.core.pending == C and h.core.budget_used_gb() == pytest.approx(18)
    out = h.send(StreamEnded(1), at=5)  # now A goes, and C loads
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "budget", "for": C}
    ]
    assert moves(h, out) == [("unload", A), ("load", C)]


def test_L25_L7_without_a_budget_the_resident_evicted_for_a_load_may_wait_for_a_stream() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, switch="break-before-make")
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.loaded(D, at=2)  # current; A, used least recently, is the one to go for C
    h.send(StreamStarted(1, B), at=3)
    out = h.send(Select(C), at=4)  # count only: C loads, A goes once the stream ended (L7)
    assert moves(h, out) == [("load", C)]
    assert h.events("evicted", out)[0]["reason"] == "max_loaded"
    out = h.send(StreamEnded(1), at=5)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]


def test_L26_auto_without_a_budget_breaks_before_it_makes() -> None:
    h = Harness(switch_debounce=0)  # count-only admission: L4 as before
    h.loaded(A, at=0)
    out = h.send(Select(B), at=1)
    assert moves(h, out) == [("unload", A)] and h.events("evicted", out) == []


# --- L27: refused loads --------------------------------------------------------------


def test_L27_a_refused_load_evicts_the_least_recently_used_idle_resident_and_retries() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.send(Activity(), at=2)  # B used last
    (load,) = h.loads(h.send(Select(C), at=3))
    out = h.load_err(load, REFUSED, refused=True)
    assert h.events("load_refused", out) == [{"model": C, "message": REFUSED}]
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "refused by LM Studio", "for": C}
    ]
    assert h.events("load_failed", out) == [] and moves(h, out) == [("unload", A)]
    assert "LM Studio refused" in str(h.core.explain(3).waiting_for)
    (unload,) = h.unloads(out)
    out = h.unload_ok(unload)  # A is gone: one retry
    (retry,) = h.loads(out)
    assert retry.model == C
    h.load_ok(retry)
    assert (h.core.model, h.core.state) == (C, State.LOADED) and h.core.residents == {B: B}


def test_L27_one_retry_per_eviction_then_the_load_fails() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    (load,) = h.loads(h.send(Select(C), at=2))
    tries = 1
    out = h.load_err(load, REFUSED, refused=True)
    while h.unloads(out):
        (unload,) = h.unloads(out)
        (load,) = h.loads(h.unload_ok(unload))
        tries += 1
        out = h.load_err(load, REFUSED, refused=True)
    assert tries == 3  # the first try and one retry for each of A and B
    assert h.events("load_failed", out) == [{"model": C, "error": REFUSED, "draft": False}]
    assert h.core.state is State.IDLE and h.core.residents == {}
    assert h.core.last_error == f"load of {C} failed: {REFUSED}"


def test_L27_a_refused_make_before_break_falls_back_to_break_before_make() -> None:
    h = Harness(switch_debounce=0, switch="make-before-break")
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))
    out = h.load_err(load, REFUSED, refused=True)  # LM Studio did not subtract A
    assert moves(h, out) == [("unload", A)]
    (unload,) = h.unloads(out)
    assert [a.model for a in h.loads(h.unload_ok(unload))] == [B]


def test_L27_a_refusal_under_a_stream_evicts_nothing_and_fails() -> None:
    h = Harness(switch_debounce=0, switch="make-before-break")
    h.loaded(A, at=0)
    h.send(StreamStarted(1, A), at=1)
    out = h.send(Select(B), at=2)  # L26: loads while A serves its stream
    (load,) = h.loads(out)
    out = h.load_err(load, REFUSED, refused=True)
    assert h.unloads(out) == [] and len(h.events("load_failed", out)) == 1  # L7, L6


# --- L28: pinned models ---------------------------------------------------------------


def test_L28_pinned_models_load_at_start_one_at_a_time_beside_the_selection() -> None:
    h = Harness(switch_debounce=0, pinned=(A, B))
    out = h.send(ServerSnapshot({}, after_outage=True), at=0)  # the first look at start
    (pin_a,) = h.loads(out)
    assert pin_a.model == A
    assert h.loads(h.send(Select(C), at=1)) == []  # L30: behind the load in flight
    out = h.load_ok(pin_a)
    assert h.events("pinned_loaded", out) == [{"model": A}]
    (load_c,) = h.loads(out)  # the selection first, then the next pinned model
    assert load_c.model == C
    (pin_b,) = h.loads(h.load_ok(load_c))
    assert pin_b.model == B
    h.load_ok(pin_b)
    assert h.core.model == C and h.core.residents == {A: A, B: B}  # pinned do not count
    views = {v.model: v for v in h.core.residents_view()}
    assert views[A].pinned and views[A].idle_deadline is None
    assert [u.model for u in h.unloads(h.tick(10_000))] == [C]  # pinned never idle out


def test_L28_pinned_models_come_back_after_an_outage_not_after_an_eject_by_hand() -> None:
    h = Harness(switch_debounce=0, pinned=(A,))
    (pin,) = h.loads(h.send(ServerSnapshot({}, after_outage=True), at=0))
    h.load_ok(pin)
    out = h.send(ServerSnapshot({}), at=5)  # ejected by hand while the server is up (L18)
    assert h.events("model_vanished", out) == [{"model": A}] and h.loads(out) == []
    assert h.core.residents == {}
    out = h.send(ServerSnapshot({}, after_outage=True), at=9)  # LM Studio restarted
    assert [a.model for a in h.loads(out)] == [A]


def test_L28_a_pinned_model_is_never_evicted_for_the_budget() -> None:
    h = Harness(switch_debounce=0, pinned=(A,), budget_gb=10)
    h.send(ModelEstimates({A: 6, B: 6}))
    (pin,) = h.loads(h.send(ServerSnapshot({}, after_outage=True), at=0))
    h.load_ok(pin)
    out = h.send(Select(B), at=1)  # 12 GB: over, but A may not go
    assert moves(h, out) == [("load", B)] and h.events("evicted", out) == []


# --- L24: usage names its model -------------------------------------------------------


def test_L24_a_stream_or_activity_naming_a_resident_is_its_own_use() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, idle_timeout=10)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A's own timer: 1 + 10
    h.send(StreamStarted(1, A), at=5)
    (view_a,) = [v for v in h.core.residents_view() if v.model == A]
    assert (view_a.streams, view_a.idle_deadline, view_a.last_used) == (1, None, 5)
    h.send(StreamEnded(1), at=8)
    (view_a,) = [v for v in h.core.residents_view() if v.model == A]
    assert view_a.idle_deadline == pytest.approx(18)
    h.send(Activity(A), at=12)
    (view_a,) = [v for v in h.core.residents_view() if v.model == A]
    assert view_a.idle_deadline == pytest.approx(22)


def test_thrashing_is_warned_once_when_switches_keep_alternating() -> None:
    h = Harness(switch_debounce=0)
    for i in range(12):
        out = h.send(Select(A if i % 2 == 0 else B), at=i * 10.0)
        for unload in h.unloads(out):
            out = h.unload_ok(unload)
        (load,) = h.loads(out)
        h.load_ok(load)
    (warning,) = h.events("thrashing")
    assert warning["models"] == sorted([A, B]) and warning["switches"] == 7
    assert warning["window_s"] == 600
    assert "max_loaded = 2" in warning["hint"] and "keep both" in warning["hint"]


def test_settings_refuse_an_unknown_switch_mode_and_a_bad_budget() -> None:
    with pytest.raises(ValueError, match="switch must be one of"):
        Settings(switch="sometimes")
    with pytest.raises(ValueError, match="budget_gb must be a finite number of GB > 0"):
        Settings(budget_gb=0)
    with pytest.raises(ValueError, match="estimate of 'x'"):
        ModelEstimates({"x": -1})


def test_L28_pinned_models_are_taken_up_again_when_lmkeeperd_comes_back_to_lm_studio() -> None:
    h = Harness(switch_debounce=0, pinned=(A,))
    (pin,) = h.loads(h.send(ServerSnapshot({}, after_outage=True), at=0))
    h.load_ok(pin)
    h.send(EngineChanged("ollama"), at=1)  # L13: forgotten, left on the server
    assert h.core.residents == {} and h.loads(h.send(ServerSnapshot({A: (A,)}), at=2)) == []
    h.send(EngineChanged("lmstudio"), at=3)
    out = h.send(ServerSnapshot({A: (A,)}), at=4)
    (again,) = h.loads(out)  # the driver adopts the instance already there
    assert again.model == A
    h.send(LoadFinished(again.op, A, adopted=True), at=5)
    assert h.core.residents == {A: A}


def test_thrashing_is_warned_again_only_after_ten_minutes_and_not_for_many_models() -> None:
    watch = ThrashWatch()
    warnings = [watch.switched("ab"[i % 2], i * 30.0, 1) for i in range(40)]  # 20 minutes
    at = [i * 30.0 for i, w in enumerate(warnings) if w is not None]
    assert at == [180.0, 780.0]  # the 7th switch, then once per 10 minutes
    spread = ThrashWatch()
    assert all(spread.switched(f"m{i}", i * 1.0, 1) is None for i in range(20))
