"""Loads started, resumed and queued (L5, L30), pinned loads at start (L28), and an
evicted resident selected again before it went (L24, L28).

Written against surviving mutants of machine.py, pinned.py and residency.py
(docs/testing.md, "Mutation testing of the core"): each test checks an action, an event
or a field of `status` the mutant changed."""

from __future__ import annotations

from core_harness import Harness, of_type

from lmkeeperd.core import ResumeLoad, Select, ServerSnapshot, UnloadCommand

A, B = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b"
P, Q = "google/gemma-3-12b", "mistral/ministral-8b"
CFG = {"context_length": 4096}


# --- a pinned model's load at start (L28, L30) -------------------------------------------


def test_L28_a_pinned_load_says_it_is_pinned_and_uses_the_load_settings() -> None:
    h = Harness(switch_debounce=0, pinned=(P, Q), load_config=CFG)
    out = h.send(ServerSnapshot({}), at=0)
    (pin,) = h.loads(out)
    assert (pin.model, pin.load_config, pin.draft) == (P, CFG, False)
    assert h.events("load_started", out) == [{"model": P, "draft": False, "pinned": True}]


# --- a load started by a selection ------------------------------------------------------


def test_L3_a_selection_that_starts_a_load_is_the_cause_status_shows() -> None:
    h = Harness(switch_debounce=0, load_config=CFG)
    out = h.send(Select(A), at=1)
    (load,) = h.loads(out)
    assert load.load_config == CFG
    assert h.events("load_started", out) == [{"model": A, "draft": False}]
    why = h.core.explain(1)
    assert (why.cause, why.cause_at, why.in_flight) == ("selected", 1, "load")


def test_L5_a_given_up_load_with_the_same_load_settings_is_resumed_and_announced() -> None:
    h = Harness(switch_debounce=0, load_config=CFG)
    (first,) = h.loads(h.send(Select(A), at=0))
    h.send(UnloadCommand(1), at=1)  # superseded: still running on the server
    out = h.send(Select(A), at=2)
    assert h.loads(out) == []
    assert [r.op for r in of_type(out, ResumeLoad)] == [first.op]
    assert h.events("load_started", out) == [{"model": A, "draft": False}]
    assert h.core.explain(2).cause == "resumed load"


# --- a selection waiting for a load in flight (L30) -------------------------------------


def test_L30_a_selection_waiting_for_a_pinned_load_replaced_by_another_says_so() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    assert h.loads(h.send(Select(A), at=1)) == []  # L30: waits for P's load
    out = h.send(Select(B), at=2)
    assert h.loads(out) == []
    assert h.events("selection_superseded", out) == [{"model": A, "by": B}]
    (load,) = h.loads(h.load_ok(pin))
    assert load.model == B
