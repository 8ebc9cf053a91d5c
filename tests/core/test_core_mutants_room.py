"""What a switch waiting for room says it waits for, and memory on its way out (L7, L25).

Against surviving mutants of residency.py (`_leaving`, `_place`, `_room_freed`), view.py
(`_room_blockers`, `budget_used_gb`) and placement.py. Times are explicit.
"""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import ModelEstimates, Select, StreamEnded, StreamStarted

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
