"""The draft model (L15) in switches, forced switches and strays: what each unload asks.

Written against surviving mutants of machine.py (docs/testing.md, "Mutation testing
of the core"): each test checks an observable effect the mutant changed."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import Select, ServerActivity, StartLoad

A, B, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "draft/tiny-0.5b"


def with_draft(h: Harness, at: float = 0.0) -> StartLoad:
    """A loaded, then its draft D loaded as instance d-1."""
    h.loaded(A, at=at)
    draft = h.loads()[-1]
    assert (draft.model, draft.draft) == (D, True)
    h.load_ok(draft, "d-1")
    assert h.core.draft == (D, "d-1")
    return draft


def test_L15_L20_a_switch_looks_first_before_unloading_the_draft_too() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    with_draft(h)
    out = h.send(Select(B), at=1)
    assert [(u.model, u.instance_id, u.reason, u.look_first) for u in h.unloads(out)] == [
        (A, A, "switch", True),
        (D, "d-1", "switch", True),
    ]
    assert h.core.draft is None  # on its way out: no longer the draft status shows


def test_L15_L20_a_forced_switch_unloads_the_draft_without_looking() -> None:
    h = Harness(switch_debounce=0, draft_model=D, busy_switch_wait=10)
    with_draft(h)
    h.send(ServerActivity(A, True, "generating"), at=1)
    h.send(Select(B), at=2)
    out = h.tick(12)
    assert [(u.model, u.reason, u.look_first) for u in h.unloads(out)] == [
        (A, "switch", False),
        (D, "switch", False),
    ]


def test_L20_L28_a_resident_idled_out_beside_the_current_model_is_looked_at_first() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, idle_timeout=10)
    h.loaded(A)
    (load_b,) = h.loads(h.send(Select(B), at=1))  # A stays resident, its timer from 1
    h.tick(5)
    h.load_ok(load_b)  # B's own timer runs from 5
    out = h.tick(11)
    assert [(u.model, u.reason, u.look_first) for u in h.unloads(out)] == [(A, "idle", True)]


def test_L11_an_idle_eject_says_why_while_it_unloads() -> None:
    h = Harness(switch_debounce=0, idle_timeout=0.5)  # under a second still ejects
    h.loaded(A)
    (eject,) = h.unloads(h.tick(0.5))
    assert (eject.model, eject.reason) == (A, "idle")
    why = h.core.explain(0.6)
    assert (why.state, why.cause, why.cause_at, why.in_flight) == (
        "unloading",
        "idle eject",
        0.5,
        "unload",
    )
