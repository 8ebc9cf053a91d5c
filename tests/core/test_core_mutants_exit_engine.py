"""Exit (L16), another engine (L13) and new settings: what the core says and leaves.

Written against surviving mutants of machine.py (docs/testing.md, "Mutation testing
of the core"): each test checks an observable effect (actions, Notify fields, the
read-only view, `explain`) that the mutant changed and no other test checked."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import (
    ActivitySource,
    EngineChanged,
    Select,
    ServerActivity,
    ServerSnapshot,
    Settings,
    SettingsChanged,
    Shutdown,
    State,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
)

A, B, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "draft/tiny-0.5b"


def test_L16_exit_during_a_load_cancels_it_and_says_exit() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A), at=1))
    out = h.send(Shutdown(), at=2)
    assert [c.op for c in h.cancels(out)] == [load.op]
    assert h.core.state is State.IDLE and h.core.model is None
    assert h.events("state_changed", out) == [{"from": "loading", "to": "idle", "model": None}]
    why = h.core.explain(3)
    assert (why.cause, why.cause_at, why.model) == ("exit", 2, None)


def test_L16_exit_unloads_residents_and_the_parked_draft_with_reason_exit() -> None:
    # max_loaded 2: A (with its draft D) stays resident while B loads; exit takes all.
    h = Harness(switch_debounce=0, max_loaded=2, draft_model=D)
    h.loaded(A)
    draft = h.loads()[-1]
    assert draft.model == D and draft.draft
    h.load_ok(draft, "d-1")
    (load_b,) = h.loads(h.send(Select(B), at=1))
    assert load_b.model == B and h.core.residents == {A: A}
    out = h.send(Shutdown(), at=2)
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [
        (A, A, "exit"),
        (D, "d-1", "exit"),
    ]


def test_L16_exit_with_a_stream_open_beside_a_load_unloads_no_resident() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A)
    h.send(Select(B), at=1)  # A parked, B loading
    h.send(StreamStarted(1), at=1.5)  # a stream is open; the current model is loading
    assert h.core.state is State.LOADING
    out = h.send(Shutdown(), at=2)
    assert h.unloads(out) == [] and h.core.deferred_unloads == ()


def test_L16_exit_unload_is_in_flight_since_the_exit() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(Shutdown(), at=5))
    assert (unload.model, unload.reason) == (A, "exit")
    why = h.core.explain(6)
    assert (why.in_flight, why.in_flight_since, why.in_flight_s) == ("unload", 5, 1)


def test_L16_nothing_in_use_and_unload_on_exit_off_says_nothing() -> None:
    h = Harness(switch_debounce=0, unload_on_exit=False)
    h.loaded(A)
    out = h.send(Shutdown(), at=2)
    assert h.events("kept_loaded_on_exit", out) == [] and h.unloads(out) == []


def test_L13_engine_change_is_announced_with_the_engine_named() -> None:
    h = Harness(switch_debounce=0)
    out = h.send(EngineChanged(" Ollama "), at=1)
    assert h.events("engine_changed", out) == [{"engine": "ollama"}]
    assert h.core.engine == "ollama"
    back = h.send(EngineChanged("lmstudio"), at=2)
    assert h.events("engine_changed", back) == [{"engine": "lmstudio"}]


def test_L13_engine_change_forgets_the_wanted_model_for_outages() -> None:
    # After another engine, an outage's snapshot must not bring back what we had.

    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(EngineChanged("ollama"), at=1)
    assert h.core.explain(1.5).cause == "engine changed to ollama"
    h.send(EngineChanged("lmstudio"), at=2)
    out = h.send(ServerSnapshot({}, after_outage=True), at=3)
    assert h.loads(out) == []


def test_L21_settings_that_turn_idle_eject_on_warn_of_the_blind_spot() -> None:
    h = Harness(switch_debounce=0, idle_timeout=0)
    out = h.send(ActivitySource(False, "no token"), at=1)
    assert h.events("activity_blind", out) == []  # no idle eject: nothing to warn of
    out = h.send(SettingsChanged(Settings(switch_debounce=0, idle_timeout=60)), at=2)
    (warning,) = h.events("activity_blind", out)
    assert warning["reason"] is None and "idle eject" in warning["advice"]


def test_L11_settings_change_starts_the_idle_timer_from_now_when_no_use_is_known() -> None:
    # A switch deferred by LM Studio (L20) stops the idle timer; with auto_load turned off
    # the queued switch is dropped when the server goes idle, and the model stays loaded
    # with no last use known. The next settings change counts the timeout from its time.
    h = Harness(switch_debounce=0, idle_timeout=100, busy_switch_wait=0)
    h.loaded(A)
    (switch,) = h.unloads(h.send(Select(B), at=1))
    h.send(UnloadDeferred(switch.op, "generating"), at=2)
    h.send(SettingsChanged(Settings(switch_debounce=0, idle_timeout=100, auto_load=False)), at=3)
    h.send(ServerActivity(A, False), at=4)
    assert h.core.state is State.LOADED and h.core.next_deadline() is None
    h.send(SettingsChanged(Settings(switch_debounce=0, idle_timeout=50)), at=10)
    assert h.core.next_deadline() == 60


def test_L13_L20_an_eject_in_flight_when_the_engine_changes_still_goes_once_idle() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (eject,) = h.unloads(h.tick(10))
    h.send(UnloadCommand(1), at=11)  # answered with the eject in flight
    h.send(EngineChanged("ollama"), at=12)  # L13: that unload finishes in the background
    out = h.send(UnloadDeferred(eject.op, "generating"), at=13)  # LM Studio was busy
    assert [d.request for d in h.done(out)] == [1] and h.done(out)[0].error
    assert h.core.deferred_unloads == ((A, A, "idle"),)  # it waits for A to be idle
    out = h.send(ServerActivity(A, busy=False), at=14)
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(A, A, "idle")]
