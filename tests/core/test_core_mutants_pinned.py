"""Pinned models (L28): loaded at start one at a time (L30), kept, followed when ejected by
hand (L18), changed by a config reload, and counted in the budget (L25).

Written against surviving mutants of pinned.py, machine.py and view.py (docs/testing.md,
"Mutation testing of the core"): each test checks an action, an event or a field of
`status` the mutant changed."""

from __future__ import annotations

from dataclasses import replace

from core_harness import Harness

from lmkeeperd.core import (
    Activity,
    EngineChanged,
    LoadFailed,
    LoadFinished,
    ModelEstimates,
    OwnStray,
    Select,
    ServerSnapshot,
    SettingsChanged,
    Shutdown,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
)

A, B = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b"
P, Q, R = "google/gemma-3-12b", "mistral/ministral-8b", "ibm/granite-4-h-tiny"


def reload(h: Harness, at: float, **changes: object) -> list:  # type: ignore[type-arg]
    return h.send(SettingsChanged(replace(h.core.settings, **changes)), at=at)


# --- loaded at start, one at a time (L28, L30) -----------------------------------------


def test_L28_pinned_models_load_at_start_while_another_model_goes_by_command() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    h.loaded(A, at=0)  # before the first look at the server: the pins wait for it
    assert h.unloads(h.send(UnloadCommand(1), at=1))  # A goes by command
    out = h.send(ServerSnapshot({A: (A,)}), at=2)  # the first look
    assert [a.model for a in h.loads(out)] == [P]  # only P's own eject by hand holds it


def test_L28_a_model_pinned_while_its_idle_eject_is_in_flight_is_loaded_anew() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, idle_timeout=10)
    h.send(ServerSnapshot({}), at=0)  # the first look: nothing pinned yet
    h.loaded(P, at=0)
    h.loaded(A, at=1)  # P stays beside A, its idle timer its own
    h.send(Activity(), at=5)  # A used: only P idles out at 11
    (eject,) = h.unloads(h.tick(11))
    assert (eject.model, eject.reason) == (P, "idle")
    (pin,) = h.loads(reload(h, 12, pinned=(P,)))  # not an eject by hand: loaded again
    assert (pin.model, pin.avoid) == (P, (P,))  # never adopting the instance on its way out


def test_L28_a_reload_that_adds_a_pinned_model_keeps_those_still_due() -> None:
    h = Harness(switch_debounce=0, pinned=(P, Q))
    (pin_p,) = h.loads(h.send(ServerSnapshot({}), at=0))  # P first; Q waits (L30)
    assert pin_p.model == P
    assert h.loads(reload(h, 1, pinned=(P, Q, R))) == []  # P's load is still in flight
    (pin_q,) = h.loads(h.load_ok(pin_p))
    assert pin_q.model == Q  # still due, before the newly added R
    (pin_r,) = h.loads(h.load_ok(pin_q))
    assert pin_r.model == R
    h.load_ok(pin_r)
    assert h.core.residents == {P: P, Q: Q, R: R}


# --- what a pinned resident keeps ------------------------------------------------------


def test_L28_L17_a_pinned_model_found_loaded_is_adopted_and_shows_it_when_selected() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (pin,) = h.loads(h.send(ServerSnapshot({P: ("p-gui",)}), at=0))
    out = h.send(LoadFinished(pin.op, "p-gui", adopted=True), at=1)  # the driver adopted it
    assert h.events("pinned_loaded", out) == [{"model": P}]
    assert h.core.residents == {P: "p-gui"}
    h.send(Select(P), at=2)  # L24: the resident becomes the current model
    assert (h.core.model, h.core.instance_id, h.core.adopted) == (P, "p-gui", True)


def test_L28_a_pinned_model_loaded_by_lmkeeperd_is_not_adopted_when_selected() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    h.load_ok(pin)
    h.send(Select(P), at=2)
    assert (h.core.model, h.core.instance_id) == (P, P) and h.core.adopted is False


def test_L28_L7_a_resident_pinned_while_its_idle_eject_waits_for_a_stream_is_kept() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, idle_timeout=10)
    h.send(ServerSnapshot({}), at=0)  # the first look: nothing pinned yet
    h.loaded(P, at=0)
    h.loaded(A, at=1)  # P stays beside A
    h.send(StreamStarted(1, A), at=5)
    assert h.unloads(h.tick(11)) == []  # P idled out: its unload waits for the stream (L7)
    assert h.core.deferred_unloads == ((P, P, "idle"),)
    out = reload(h, 12, pinned=(P,))  # that instance is kept as the pinned resident
    assert h.loads(out) == [] and h.events("pinned_loaded", out) == [{"model": P}]
    assert h.core.deferred_unloads == ()
    out = h.send(StreamEnded(1), at=13)
    assert h.unloads(out) == [] and h.core.residents == {P: P}


def test_L28_L5_a_superseded_selection_load_kept_as_pinned_is_ours_and_used_now() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, pinned=(P,))
    (load,) = h.loads(h.send(Select(P), at=0))  # a selection's load of the pinned model
    h.send(EngineChanged("ollama"), at=1)  # L13: waited for no more (superseded, L5)
    h.send(EngineChanged("lmstudio"), at=2)
    h.load_ok(load)  # lands at 2: kept as the pinned resident
    (view,) = h.core.residents_view()
    assert (view.model, view.pinned, view.last_used, view.idle_deadline) == (P, True, 2, None)
    h.send(Select(P), at=3)  # L24: current now, loaded by lmkeeperd (not adopted)
    assert (h.core.model, h.core.instance_id) == (P, P) and h.core.adopted is False


# --- strays of ours of a pinned model (L22, L28) ---------------------------------------


def test_L22_L28_a_stray_of_a_pinned_model_is_kept_and_its_pinned_load_waited_for_no_more() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    h.loaded(A, at=0)
    assert h.unloads(h.send(UnloadCommand(1), at=1))  # A's unload is in flight meanwhile
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=2))
    out = h.send(OwnStray(P, "p-old"), at=3)  # e.g. journaled before a restart
    assert [c.op for c in h.cancels(out)] == [pin.op] and h.unloads(out) == []
    assert h.events("pinned_loaded", out) == [{"model": P}]
    assert h.core.residents == {P: "p-old"}
    out = h.load_ok(pin, "p-new")  # the load nobody waits for lands: never two (L5)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("p-new", "superseded")]


def test_L22_L28_a_second_instance_of_a_pinned_resident_is_a_stray_to_unload() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    h.load_ok(pin, "p-1")
    assert h.send(OwnStray(P, "p-1"), at=1) == []  # the resident's own instance: nothing
    out = h.send(OwnStray(P, "p-2"), at=2)
    assert h.events("stray_found", out) == [{"model": P, "instance_id": "p-2"}]
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(P, "p-2", "stray")]
    assert h.core.residents == {P: "p-1"}


def test_L22_L28_L30_a_stray_kept_as_pinned_settles_one_abandoned_load_of_it() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    h.send(ModelEstimates({P: 6}))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    h.send(LoadFailed(pin.op, "timed out", abandoned=True), at=1)  # may still land (L30)
    (load,) = h.loads(h.send(Select(P), at=2))
    h.send(LoadFailed(load.op, "timed out", abandoned=True), at=3)  # a second one
    assert h.core.budget_used_gb() == 12
    out = h.send(OwnStray(P, "p-late"), at=4)  # one of them landed: kept as the pinned one
    assert h.events("pinned_loaded", out) == [{"model": P}] and h.unloads(out) == []
    assert h.core.budget_used_gb() == 12  # the resident, and the other load still counted
    (view,) = h.core.residents_view()
    assert (view.model, view.instance_id, view.last_used) == (P, "p-late", 4)
    h.send(Select(P), at=5)  # L24: current now; lmkeeperd started it (not adopted)
    assert h.core.model == P and h.core.adopted is False


def test_L22_L28_a_stray_of_a_pinned_model_is_kept_while_another_models_load_runs() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    assert h.loads(h.send(Select(A), at=0))  # A's load is in flight; no pins started yet
    out = h.send(OwnStray(P, "p-old"), at=1)
    assert h.events("pinned_loaded", out) == [{"model": P}] and h.unloads(out) == []
    assert h.cancels(out) == [] and h.core.residents == {P: "p-old"}


def test_L22_L5_a_stray_of_a_pinned_model_whose_selection_load_still_runs_is_unloaded() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (load,) = h.loads(h.send(Select(P), at=0))  # a selection's load of P (no pins yet)
    h.send(UnloadCommand(1), at=1)  # superseded (L5): it still runs and lands as pinned
    out = h.send(OwnStray(P, "p-x"), at=2)  # never two instances
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("p-x", "stray")]
    out = h.load_ok(load, "p-1")
    assert h.events("pinned_loaded", out) == [{"model": P}] and h.core.residents == {P: "p-1"}


# --- an unload command meets a pinned load (L18, L28) ---------------------------------


def test_L28_L18_a_pinned_load_adopting_an_instance_unloaded_by_command_is_not_kept() -> None:
    h = Harness(switch_debounce=0, pinned=(P, Q))
    h.loaded(A, at=0)
    (pin_p,) = h.loads(h.send(ServerSnapshot({A: (A,), P: ("p-gui",)}), at=1))
    (unload,) = h.unloads(h.send(UnloadCommand(1, P), at=2))  # L18: whoever loaded it
    out = h.send(LoadFinished(pin_p.op, "p-gui", adopted=True), at=3)  # adopted meanwhile
    assert h.events("pinned_loaded", out) == [] and h.core.residents == {}
    (pin_q,) = h.loads(out)  # the next pinned model (L30: one at a time)
    assert pin_q.model == Q
    out = h.load_ok(pin_q)
    assert h.events("pinned_loaded", out) == [{"model": Q}]
    assert h.loads(out) == []  # P is followed like an eject by hand while it goes
    h.unload_ok(unload)
    assert h.core.residents == {Q: Q} and h.loads(h.tick(10)) == []


# --- exit (L16) -------------------------------------------------------------------------


def test_L16_L28_exit_stops_waiting_for_a_pinned_load_in_flight() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    assert [v.state for v in h.core.residents_view()] == ["loading"]
    assert h.core.loads_in_flight == 1
    out = h.send(Shutdown(), at=1)
    assert [c.op for c in h.cancels(out)] == [pin.op]
    assert h.core.residents_view() == () and h.core.loads_in_flight == 0


def test_L13_L28_a_pinned_load_landing_after_the_engine_changed_is_unloaded_not_kept() -> None:
    h = Harness(switch_debounce=0, pinned=(P,))
    (pin,) = h.loads(h.send(ServerSnapshot({}), at=0))
    out = h.send(EngineChanged("ollama"), at=1)
    assert [c.op for c in h.cancels(out)] == [pin.op] and h.core.loads_in_flight == 0
    out = h.load_ok(pin)  # L5: a load nobody waits for lands: its instance goes
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(P, "superseded")]
    assert h.core.residents == {} and h.events("pinned_loaded", out) == []


def test_L13_L28_an_unload_in_flight_is_no_pinned_load_to_cancel_when_the_engine_changes() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A, at=0)
    h.send(Select(B), at=1)  # L4: A's unload first
    out = h.send(EngineChanged("ollama"), at=2)
    assert h.cancels(out) == [] and h.core.unloads_in_flight == 1


# --- the budget status shows (L25, L30) ------------------------------------------------


def test_L25_L30_the_budget_used_counts_a_pinned_load_in_flight_and_no_unknown_sizes() -> None:
    h = Harness(switch_debounce=0, pinned=(P,), budget_gb=20)
    h.send(ModelEstimates({P: 6}))  # A's size is not known: it adds nothing
    h.loaded(A, at=0)
    assert h.core.budget_used_gb() == 0
    h.send(ServerSnapshot({A: (A,)}), at=1)  # P's load starts beside A
    assert h.core.budget_used_gb() == 6
