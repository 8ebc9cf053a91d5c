"""Loads started, resumed and queued (L5, L30), pinned loads at start (L28), and an
evicted resident selected again before it went (L24, L28).

Written against surviving mutants of machine.py, pinned.py and residency.py
(docs/testing.md, "Mutation testing of the core"): each test checks an action, an event
or a field of `status` the mutant changed."""

from __future__ import annotations

from dataclasses import replace

from core_harness import Harness, of_type

from lmkeeperd.core import (
    EngineChanged,
    OwnStray,
    ResumeLoad,
    Select,
    ServerSnapshot,
    SettingsChanged,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
)

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "ibm/granite-4-h-tiny"
P, Q, R = "google/gemma-3-12b", "mistral/ministral-8b", "openai/gpt-oss-20b"
D = "draft/tiny-0.5b"
CFG = {"context_length": 4096}


def reload(h: Harness, at: float, **changes: object) -> list:  # type: ignore[type-arg]
    return h.send(SettingsChanged(replace(h.core.settings, **changes)), at=at)


def stray_pinned(h: Harness) -> list:  # type: ignore[type-arg]
    """P's given-up load lands as p-1 while a stream is open (its unload deferred, L7);
    a reload at 5 pins P and Q: the stray is kept as P, and Q loads (L28, L30)."""
    h.send(ServerSnapshot({}), at=0)
    (load,) = h.loads(h.send(Select(P), at=1))
    h.send(UnloadCommand(1), at=2)  # superseded: still running on the server
    h.send(StreamStarted(1), at=3)
    assert h.unloads(h.load_ok(load, "p-1")) == []  # deferred: a stream is open
    return reload(h, 5, pinned=(P, Q))


# --- a pinned model's load at start (L28, L30) -------------------------------------------


def test_L28_a_pinned_load_says_it_is_pinned_and_uses_the_load_settings() -> None:
    h = Harness(switch_debounce=0, pinned=(P, Q), load_config=CFG)
    out = h.send(ServerSnapshot({}), at=0)
    (pin,) = h.loads(out)
    assert (pin.model, pin.load_config, pin.draft) == (P, CFG, False)
    assert h.events("load_started", out) == [{"model": P, "draft": False, "pinned": True}]


# --- a load started by a selection ------------------------------------------------------


def test_L1_a_selection_that_starts_a_load_is_the_cause_status_shows() -> None:
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


def test_L28_L30_a_pinned_model_already_held_at_the_first_look_lets_the_next_one_load() -> None:
    h = Harness(switch_debounce=0, pinned=(P, Q))
    h.loaded(P, at=0)  # before the first look: the current model
    (pin,) = h.loads(h.send(ServerSnapshot({P: (P,)}), at=1))
    assert pin.model == Q


def test_L22_L28_a_stray_of_ours_kept_as_pinned_lets_the_next_pinned_model_load() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    out = stray_pinned(h)
    assert h.events("pinned_loaded", out) == [{"model": P}]
    assert [a.model for a in h.loads(out)] == [Q]  # not P again: its stray is kept
    assert h.core.residents == {P: "p-1"}
    assert h.unloads(h.send(StreamEnded(1), at=6)) == []  # never unloaded unasked
    h.send(Select(P), at=7)
    assert (h.core.model, h.core.instance_id, h.core.adopted) == (P, "p-1", False)


def test_L28_L11_a_stray_kept_as_pinned_idles_out_from_its_pinning_once_unpinned() -> None:
    h = Harness(switch_debounce=0, max_loaded=3, idle_timeout=10)
    (pin_q,) = h.loads(stray_pinned(h))
    h.load_ok(pin_q)
    h.send(StreamEnded(1), at=6)
    assert h.unloads(reload(h, 100, pinned=())) == []
    out = h.tick(101)  # unused since it was pinned at 5: past its idle timeout
    assert {(u.model, u.instance_id, u.reason) for u in h.unloads(out)} == {
        (P, "p-1", "idle"),
        (Q, Q, "idle"),
    }


# --- a selection waiting for another load (L30) --------------------------------------------


def test_L30_a_selection_waiting_for_a_given_up_load_replaced_by_another_says_so() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A), at=1))
    h.send(UnloadCommand(1), at=2)  # superseded: still running on the server
    assert h.loads(h.send(Select(B), at=3)) == []  # L30: waits for A's load
    out = h.send(Select(C), at=4)
    assert h.events("selection_superseded", out) == [{"model": B, "by": C}]
    out = h.load_ok(first)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "superseded")]
    assert [a.model for a in h.loads(out)] == [C]


def test_L15_L30_a_draft_due_while_a_given_up_load_runs_loads_once_it_lands() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    (first,) = h.loads(h.send(Select(A), at=1))
    out = h.send(OwnStray(A, "a-x"), at=2)  # a stray of ours taken back: A's load given up
    assert (h.core.model, h.core.instance_id, h.core.state) == (A, "a-x", State.LOADED)
    assert h.loads(out) == []  # L30: the draft waits for A's load in flight
    out = h.load_ok(first, "a-y")
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("a-y", "superseded")]
    assert [(a.model, a.draft) for a in h.loads(out)] == [(D, True)]


# --- an evicted resident selected again before it went (L24, L28) ------------------------


def test_L24_L28_a_resident_whose_eviction_waits_on_a_stream_is_taken_back_when_selected() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, switch="make-before-break", idle_timeout=10)
    h.send(ServerSnapshot({}), at=0)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside B
    (load_c,) = h.loads(h.send(Select(C), at=2))
    h.send(StreamStarted(1), at=2.5)
    out = h.load_ok(load_c)  # A evicted for C, its unload deferred by the stream (L7)
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "max_loaded", "for": C}
    ]
    assert h.unloads(out) == []
    out = h.send(Select(A), at=4)
    assert h.loads(out) == []  # never a second instance of A
    assert h.events("resident_selected", out) == [{"model": A, "instance_id": A}]
    assert (h.core.model, h.core.instance_id, h.core.state) == (A, A, State.LOADED)
    assert h.core.explain(4).cause == "resident selected"
    out = h.send(StreamEnded(1), at=5)
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(B, B, "switch")]
    assert h.core.residents == {C: C}


def test_L28_L30_pinned_models_held_at_the_first_look_let_the_next_one_load() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, switch="make-before-break", pinned=(P, Q, R))
    h.loaded(P, at=0)  # before the first look
    h.loaded(Q, at=1)  # P stays beside Q
    (pin,) = h.loads(h.send(ServerSnapshot({P: (P,), Q: (Q,)}), at=2))
    assert pin.model == R  # both held: neither loaded again


def test_L22_L28_L30_a_stray_kept_as_pinned_once_a_load_lands_lets_the_next_one_load() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    h.send(ServerSnapshot({}), at=0)
    (load,) = h.loads(h.send(Select(P), at=1))
    h.send(UnloadCommand(1), at=2)  # superseded: still running on the server
    h.send(StreamStarted(1), at=3)
    assert h.unloads(h.load_ok(load, "p-1")) == []  # deferred: a stream is open
    (load_a,) = h.loads(h.send(Select(A), at=4))
    assert h.loads(reload(h, 5, pinned=(P, Q))) == []  # L30: A's load first
    out = h.load_ok(load_a)
    assert h.events("pinned_loaded", out) == [{"model": P}]  # its stray kept
    assert [a.model for a in h.loads(out)] == [Q]
    assert h.core.residents == {P: "p-1"}


def test_L5_L13_L28_a_pinned_load_given_up_on_another_engine_is_resumed_when_selected() -> None:
    h = Harness(switch_debounce=0, pinned=(P, Q), load_config=CFG)
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    assert h.cancels(h.send(EngineChanged("ollama"), at=1)) != []  # waited for no more (L5)
    h.send(EngineChanged("lmstudio"), at=2)
    out = h.send(Select(P), at=3)
    assert h.loads(out) == []  # the same load settings: no second load of P
    assert [r.op for r in of_type(out, ResumeLoad)] == [pin.op]
    h.load_ok(pin, "p-1")
    assert (h.core.model, h.core.instance_id, h.core.state) == (P, "p-1", State.LOADED)


def test_L5_L30_a_given_up_load_is_not_resumed_while_an_instance_of_its_model_unloads() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A), at=1))
    h.send(UnloadCommand(1), at=2)  # superseded: still running on the server
    (stray,) = h.unloads(h.send(OwnStray(A, "a-x"), at=3))  # not wanted: a stray to unload
    assert (stray.instance_id, stray.reason) == ("a-x", "stray")
    out = h.send(Select(A), at=4)
    assert of_type(out, ResumeLoad) == [] and h.loads(out) == []  # L30: A's load lands first
    out = h.load_ok(first, "a-y")
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("a-y", "superseded")]
    (again,) = h.loads(out)
    assert (again.model, again.avoid) == (A, ("a-x", "a-y"))  # loaded anew after
