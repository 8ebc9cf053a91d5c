"""LM Studio's view and activity (L17-L22): what the core says about it.

Written against surviving mutants of server_rules.py (docs/testing.md, "Mutation testing
of the core"): each test checks a Notify field or an action the mutant changed."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import Select, ServerActivity, ServerSnapshot

A, B, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "draft/tiny-0.5b"


def test_L20_forced_switch_says_how_long_it_waited_to_the_millisecond() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=120)
    h.loaded(A)
    h.send(ServerActivity(A, True, "generating", 2), at=5)
    h.send(Select(B), at=10)
    (forced,) = h.events("switch_forced", h.tick(130.12345))
    assert forced == {
        "model": A,
        "instance_id": A,
        "doing": "generating, 2 queued",
        "waited_s": 120.123,
    }


def test_L18_L15_a_draft_gone_from_the_server_is_forgotten_a_listed_one_kept() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    h.loaded(A)
    h.load_ok(h.loads()[-1], "d-1")
    h.send(ServerSnapshot({A: (A,), D: ("d-1",)}), at=1)
    assert h.core.draft == (D, "d-1")
    out = h.send(ServerSnapshot({A: (A,)}), at=2)  # D unloaded by hand
    assert h.core.draft is None and h.unloads(out) == [] and h.core.model == A
