"""What a switch waiting for room says it waits for, and memory on its way out (L7, L25).

Against surviving mutants of residency.py (`_leaving`, `_place`, `_room_freed`), view.py
(`_room_blockers`, `budget_used_gb`) and placement.py. Times are explicit.
"""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Activity,
    ModelEstimates,
    Select,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
)

A, B, C, E = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b", "tiny/e"


def waiting_for_a_busy_one_and_one_leaving() -> Harness:
    """E in use by a stream, B current, A evicted but staying until the stream ends (L7);
    C selected: it would fit only once E is idle or A is gone."""
    h = Harness(switch_debounce=0, max_loaded=2, budget_gb=15)  # switch "auto"
    h.send(ModelEstimates({A: 6, B: 6, C: 8, E: 2}))
    h.loaded(E, at=0)
    h.send(StreamStarted(1, E), at=0.5)
    h.loaded(A, at=1)  # E stays beside it, in use
    (load,) = h.loads(h.send(Select(B), at=2))  # 8 + 6 fit 15: make before break (L26)
    assert h.unloads(h.load_ok(load, B)) == []  # A goes for max_loaded, once the stream ends
    assert h.core.residents == {E: E} and h.core.budget_used_gb() == pytest.approx(14)
    out = h.send(Select(C), at=3)  # 2 + 6 (A, leaving) + 8 > 15 even without B: it waits
    assert h.loads(out) == [] and h.unloads(out) == [] and h.core.pending == C
    return h


def test_L25_L7_status_names_the_resident_in_use_and_the_one_on_its_way_out() -> None:
    h = waiting_for_a_busy_one_and_one_leaving()
    why = h.core.explain(4)
    assert why.waiting_for == f"{E} to be idle and {A} to be unloaded to make room for {C}"


def test_L25_L7_the_switch_goes_on_once_the_stream_ends() -> None:
    h = waiting_for_a_busy_one_and_one_leaving()
    out = h.send(StreamEnded(1), at=5)  # A's unload goes; C makes room with A still counted
    assert [(u.model, u.reason) for u in h.unloads(out)] == [
        (A, "switch"),
        (E, "switch"),
        (B, "switch"),
    ]
    assert h.core.pending == C and h.core.explain(5).waiting_for == "unload in flight"


def test_L25_status_names_an_unload_in_flight_a_switch_waits_for() -> None:
    h = Harness(switch_debounce=0, budget_gb=20)  # switch = "auto"
    h.send(ModelEstimates({A: 8, B: 8, C: 16}))
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))  # make-before-break: 16 GB fit
    assert [u.model for u in h.unloads(h.load_ok(load, B))] == [A]  # A goes; in flight
    assert h.loads(h.send(Select(C), at=2)) == []  # 8 (A) + 16 > 20 whatever B does
    assert h.core.explain(3).waiting_for == f"{A} to be unloaded to make room for {C}"


def test_L25_a_budget_filled_exactly_evicts_nothing() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, budget_gb=10, switch="break-before-make")
    h.send(ModelEstimates({A: 6, B: 4}))
    h.loaded(A, at=0)
    out = h.send(Select(B), at=1)  # 6 + 4 = 10: not over 10
    assert h.unloads(out) == [] and [a.model for a in h.loads(out)] == [B]


def test_L25_a_model_with_no_estimate_counts_nothing_in_the_budget() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, budget_gb=10, switch="break-before-make")
    h.send(ModelEstimates({A: 10}))  # B: no estimate
    h.loaded(A, at=0)
    out = h.send(Select(B), at=1)
    assert h.unloads(out) == [] and [a.model for a in h.loads(out)] == [B]


def test_L25_the_current_model_used_least_recently_is_the_one_evicted() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, switch="break-before-make")
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # B current, last used at 1; A beside it
    h.send(Activity(A), at=2)  # A used since
    out = h.send(Select(C), at=3)
    assert [e["model"] for e in h.events("evicted", out)] == [B]


def test_L25_L30_a_load_that_may_still_land_makes_an_idle_resident_go() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, budget_gb=12, switch="break-before-make")
    h.send(ModelEstimates({A: 4, B: 8, C: 8}))
    h.loaded(A, at=0)
    (load,) = h.loads(h.send(Select(B), at=1))  # 4 + 8 fit 12: A stays beside it
    h.load_err(load, "timed out", abandoned=True)  # B may still land: 8 GB counted
    out = h.send(Select(C), at=2)  # 4 + 8 (B landing) + 8 > 12: A goes, and C loads
    assert [e["model"] for e in h.events("evicted", out)] == [A]
    assert [a.model for a in h.loads(out)] == [C]


def test_L25_the_current_model_being_unloaded_counts_once_in_the_budget() -> None:
    h = Harness(switch_debounce=0, budget_gb=20)
    h.send(ModelEstimates({A: 6}))
    h.loaded(A, at=0)
    assert [u.model for u in h.unloads(h.send(UnloadCommand(1), at=1))] == [A]
    assert h.core.budget_used_gb() == pytest.approx(6)  # A, unloading: not twice
