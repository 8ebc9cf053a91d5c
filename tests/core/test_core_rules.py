"""Streams, idleness, engines, exit and the server (L7-L18), one test or more per rule.

Times are explicit. Selecting and switching: test_core_rules_select.py; LM Studio's
activity and strays (L19-L22): test_core_rules_server.py."""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Activity,
    EngineChanged,
    LifecycleError,
    LoadFinished,
    MemoryPressure,
    Select,
    ServerSnapshot,
    Settings,
    SettingsChanged,
    Shutdown,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadFinished,
)

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b"


# --- L7 ----------------------------------------------------------------------


def test_L7_mid_stream_selection_waits_for_stream_end_and_latest_wins() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    assert h.core.state is State.STREAMING
    assert h.send(Select(B), at=2) == []
    out = h.send(Select(C), at=3)  # only says which queued selection it replaced
    assert [(type(a).__name__, h.events("selection_superseded", out)) for a in out] == [
        ("Notify", [{"model": B, "by": C}])
    ]
    assert h.core.pending == C and h.unloads() == []
    out = h.send(StreamEnded(1), at=4)
    (unload,) = h.unloads(out)
    assert unload.model == A
    assert [a.model for a in h.loads(h.unload_ok(unload))] == [C]


def test_L7_queued_selection_equal_to_current_is_dropped() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(Select(B), at=2)
    h.send(Select(A), at=3)
    assert h.core.pending is None
    out = h.send(StreamEnded(1), at=4)
    assert h.unloads(out) == [] and h.core.state is State.LOADED
    assert h.core.idle_eject_in(4) == pytest.approx(100)


def test_L7_debounced_switch_falling_due_mid_stream_is_queued() -> None:
    h = Harness(switch_debounce=0.3)
    h.loaded(A)
    h.send(Select(B), at=1.0)
    h.send(StreamStarted(7), at=1.1)
    assert h.tick(2.0) == [] and h.core.pending == B
    assert [u.model for u in h.unloads(h.send(StreamEnded(7), at=3))] == [A]


def test_L7_unload_command_refused_while_streaming() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    out = h.send(UnloadCommand(request=9), at=2)
    (done,) = h.done(out)
    assert done.request == 9 and done.error is not None and "stream" in done.error
    assert h.unloads() == []


# --- L8 ----------------------------------------------------------------------


def test_L8_streams_counted_across_clients_and_each_end_releases_one() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(StreamStarted(2), at=1)
    h.send(StreamStarted(2), at=1)  # a duplicate id counts once
    assert h.core.active_streams == 2
    h.send(Select(B), at=2)
    h.send(StreamEnded(1), at=3)
    assert h.unloads() == [] and h.core.state is State.STREAMING
    h.send(StreamEnded(99), at=3)  # unknown ids are ignored
    assert h.core.active_streams == 1
    assert [u.model for u in h.unloads(h.send(StreamEnded(2), at=4))] == [A]


# --- L9 ----------------------------------------------------------------------


def test_L9_stream_start_clears_idle_timer_and_last_end_restarts_it() -> None:
    h = Harness(switch_debounce=0, idle_timeout=60)
    h.loaded(A)
    h.send(StreamStarted(1), at=10)
    assert h.core.idle_eject_in(10) is None and h.core.next_deadline() is None
    assert h.unloads(h.tick(1000)) == []  # no eject while streaming
    h.send(StreamEnded(1), at=1000)
    assert h.core.idle_eject_in(1000) == pytest.approx(60)


# --- L10 ---------------------------------------------------------------------


def test_L10_activity_restarts_idle_timer_only_in_loaded() -> None:
    h = Harness(switch_debounce=0, idle_timeout=60)
    (load,) = h.loads(h.send(Select(A)))
    h.send(Activity(), at=1)  # loading: nothing to refresh
    assert h.core.idle_eject_in(1) is None
    h.load_ok(load)
    h.send(Activity(), at=50)
    assert h.core.idle_eject_in(50) == pytest.approx(60)
    assert h.unloads(h.tick(100)) == []
    assert [u.reason for u in h.unloads(h.tick(110))] == ["idle"]


# --- L11 ---------------------------------------------------------------------


def test_L11_idle_eject_after_timeout_returns_to_idle() -> None:
    h = Harness(switch_debounce=0, idle_timeout=30)
    h.loaded(A, at=0)
    assert h.core.next_deadline() == pytest.approx(30)
    assert h.tick(29.99) == []
    (unload,) = h.unloads(h.tick(30))
    assert (unload.model, unload.reason) == (A, "idle")
    out = h.unload_ok(unload)
    assert h.core.state is State.IDLE and h.core.model is None
    assert h.events("unloaded", out) == [{"model": A, "reason": "idle"}]


@pytest.mark.parametrize("timeout", [0, -5])
def test_L11_zero_or_negative_timeout_disables_idle_eject(timeout: float) -> None:
    h = Harness(switch_debounce=0, idle_timeout=timeout)
    h.loaded(A)
    assert h.core.next_deadline() is None
    assert h.unloads(h.tick(10**9)) == []


def test_L11_failed_eject_is_reported_and_state_still_idle() -> None:
    h = Harness(switch_debounce=0, idle_timeout=30)
    h.loaded(A)
    (unload,) = h.unloads(h.tick(30))
    out = h.unload_err(unload, "hung")
    assert h.core.state is State.IDLE
    assert h.events("unload_failed", out)[0]["reason"] == "idle"


def test_L11_new_idle_timeout_counts_from_last_activity() -> None:
    h = Harness(switch_debounce=0, idle_timeout=1000)
    h.loaded(A, at=0)
    h.send(Activity(), at=100)
    h.send(SettingsChanged(Settings(switch_debounce=0, idle_timeout=60)), at=120)
    assert h.core.next_deadline() == pytest.approx(160)


# --- L12 ---------------------------------------------------------------------


def test_L12_every_load_is_a_start_load_action_for_the_driver_to_check() -> None:
    """The advisory itself is the driver's (it needs a memory probe): the core's part
    is that every load, main or draft, goes through one StartLoad action, so the driver
    has one place to check memory before it. Tested end to end in the daemon tests."""
    h = Harness(switch_debounce=0, draft_model=C)
    h.loaded(A)
    assert [(a.model, a.draft) for a in h.loads()] == [(A, False), (C, True)]
    assert h.events("load_started") == [
        {"model": A, "draft": False},
        {"model": C, "draft": True},
    ]


# --- L13 ---------------------------------------------------------------------


def test_L13_other_engine_cancels_everything_and_ignores_clients() -> None:
    h = Harness(switch_debounce=0.3, idle_timeout=60)
    h.loaded(A)
    h.send(Select(B), at=1)  # pending debounce
    out = h.send(EngineChanged("ollama"), at=1.1)
    assert h.core.state is State.IDLE and h.core.model is None
    assert h.core.next_deadline() is None and h.core.pending is None
    assert h.unloads(out) == []  # hands-off: the model stays on the server
    assert h.send(Select(C), at=2) == [] and h.send(StreamStarted(1), at=2) == []
    assert h.send(Activity(), at=2) == []
    assert h.tick(10_000) == []
    assert h.core.selected == C  # still recorded for status
    h.send(EngineChanged("lmstudio"), at=10_001)
    assert [a.model for a in h.loads(h.send(Select(B), at=10_002))] == []
    assert [a.model for a in h.loads(h.tick(10_003))] == [B]


def test_L13_streams_are_ignored_while_another_engine_is_in_use() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.send(EngineChanged("ollama"))
    assert h.send(StreamStarted(1), at=1) == []
    assert h.core.active_streams == 0  # not counted: it belongs to the other engine
    h.send(EngineChanged("lmstudio"), at=2)
    h.loaded(A, at=3)
    # A counted stream would hold the model in use and block every unload (L7).
    assert h.core.state is State.LOADED and h.core.active_streams == 0
    assert [(u.model, u.reason) for u in h.unloads(h.tick(13))] == [(A, "idle")]
    assert h.send(StreamEnded(1), at=14) == []  # its end is unknown: ignored too


def test_L13_load_in_flight_is_cancelled_on_engine_change() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A)))
    out = h.send(EngineChanged("ollama"), at=1)
    assert [c.op for c in h.cancels(out)] == [load.op]
    # L5 still applies: the stray instance we caused is cleaned up.
    assert [u.reason for u in h.unloads(h.load_ok(load))] == ["superseded"]


# --- L14 ---------------------------------------------------------------------


def test_L14_load_settings_go_with_every_load() -> None:
    cfg = {"context_length": 16384, "flash_attention": True}
    h = Harness(switch_debounce=0, load_config=cfg)
    (load,) = h.loads(h.send(Select(A)))
    assert load.load_config == cfg
    h.send(SettingsChanged(Settings(switch_debounce=0, load_config={"context_length": 4096})))
    h.load_ok(load)
    (unload,) = h.unloads(h.send(Select(B), at=1))
    (second,) = h.loads(h.unload_ok(unload))
    assert second.load_config == {"context_length": 4096}


# --- L15 ---------------------------------------------------------------------


def test_L15_draft_loaded_after_main_and_unloaded_with_it() -> None:
    h = Harness(switch_debounce=0, draft_model="qwen/qwen2.5-0.5b")
    (main,) = h.loads(h.send(Select(A)))
    out = h.load_ok(main)
    (draft,) = h.loads(out)
    assert draft.draft and draft.model == "qwen/qwen2.5-0.5b"
    h.load_ok(draft, "draft-1")
    assert h.core.draft == ("qwen/qwen2.5-0.5b", "draft-1")
    out = h.send(Select(B), at=1)
    assert sorted((u.model, u.instance_id, u.reason) for u in h.unloads(out)) == [
        ("qwen/qwen2.5-0.5b", "draft-1", "switch"),
        (A, A, "switch"),
    ]


def test_L15_draft_already_loaded_by_someone_else_is_not_ours() -> None:
    h = Harness(switch_debounce=0, draft_model="d")
    (main,) = h.loads(h.send(Select(A)))
    (draft,) = h.loads(h.load_ok(main))
    h.send(LoadFinished(draft.op, "d", adopted=True))
    assert h.core.draft is None
    out = h.send(Select(B), at=1)
    assert [u.model for u in h.unloads(out)] == [A]


# --- L16 ---------------------------------------------------------------------


def test_L16_shutdown_cancels_pending_and_unloads_current() -> None:
    h = Harness(switch_debounce=0.3, idle_timeout=60)
    h.loaded(A)
    h.send(Select(B), at=1)
    out = h.send(Shutdown(), at=1.1)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "exit")]
    assert h.core.next_deadline() is None and h.core.stopped
    assert h.core.unloads_in_flight == 1
    # Stop is idempotent and everything after it is ignored.
    assert h.send(Shutdown(), at=1.2) == []
    assert h.send(Select(C), at=1.3) == []
    (unload,) = h.unloads(out)
    h.unload_ok(unload)
    assert h.core.unloads_in_flight == 0


def test_L16_unload_on_exit_off_leaves_model_loaded() -> None:
    h = Harness(switch_debounce=0, unload_on_exit=False)
    h.loaded(A)
    assert h.unloads(h.send(Shutdown(), at=1)) == []


def test_L16_shutdown_never_unloads_under_a_stream() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    out = h.send(Shutdown(), at=2)
    assert h.unloads(out) == []
    assert h.events("kept_loaded_on_exit", out) == [{"model": A, "streams": 1}]


# --- L17 ---------------------------------------------------------------------


def test_L17_selected_model_already_loaded_is_adopted() -> None:
    """The driver answers StartLoad with the existing instance (adopted=True)."""
    h = Harness(switch_debounce=0)
    h.send(ServerSnapshot({A: (A,)}, after_outage=True))
    (load,) = h.loads(h.send(Select(A)))
    out = h.send(LoadFinished(load.op, A, adopted=True))
    assert h.core.state is State.LOADED and h.core.adopted
    assert h.events("load_finished", out)[0]["adopted"] is True


def test_L17_model_wanted_before_an_outage_is_loaded_when_server_returns() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A)))
    h.load_err(load, "connection refused", unreachable=True)
    assert h.core.state is State.IDLE
    out = h.send(ServerSnapshot({}, after_outage=True), at=5)
    assert [a.model for a in h.loads(out)] == [A]


def test_L17_server_restart_forgetting_model_reloads_it() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    out = h.send(ServerSnapshot({}, after_outage=True), at=5)
    assert h.events("model_vanished", out) == [{"model": A}]
    assert [a.model for a in h.loads(out)] == [A]


# --- L18 ---------------------------------------------------------------------


def test_L18_model_unloaded_behind_our_back_is_followed_not_fought() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    out = h.send(ServerSnapshot({B: (B,)}), at=5)
    assert h.core.state is State.IDLE and h.core.model is None
    assert h.loads(out) == [] and h.unloads(out) == []
    assert h.send(ServerSnapshot({}, after_outage=True), at=6) == []  # no longer wanted


def test_L18_models_we_did_not_load_are_never_unloaded_except_by_name() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.send(ServerSnapshot({B: ("B:1", "B:2")}))
    h.loaded(A)
    (eject,) = h.unloads(h.tick(100))
    assert eject.model == A
    h.unload_ok(eject)
    assert {u.model for u in h.unloads()} == {A}
    out = h.send(UnloadCommand(request=1, model=B), at=101)
    assert sorted(u.instance_id for u in h.unloads(out)) == ["B:1", "B:2"]
    assert h.done(out) == []  # answered once both are unloaded
    for u in h.unloads(out):
        last = h.send(UnloadFinished(u.op))
    assert [(d.request, d.error) for d in h.done(last)] == [(1, None)]


def test_L18_unload_command_for_model_not_on_server_is_a_clear_error() -> None:
    h = Harness()
    (done,) = h.done(h.send(UnloadCommand(request=3, model="nope/x")))
    assert done.error is not None and "nope/x" in done.error
    (done,) = h.done(h.send(UnloadCommand(request=4)))
    assert done.error == "nothing is loaded by lmkeeperd"


# --- beyond the rule list ----------------------------------------------------


def test_unload_command_for_current_model_answers_once_unloaded() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    out = h.send(UnloadCommand(request=5), at=1)
    (unload,) = h.unloads(out)
    assert unload.reason == "command" and h.done(out) == []
    assert [(d.request, d.error) for d in h.done(h.unload_ok(unload))] == [(5, None)]


def test_memory_pressure_ejects_only_when_not_streaming() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    assert h.send(MemoryPressure(), at=2) == []
    h.send(StreamEnded(1), at=3)
    assert [u.reason for u in h.unloads(h.send(MemoryPressure(), at=4))] == ["memory_pressure"]


def test_outcome_for_unknown_op_raises_and_changes_nothing() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    before = (h.core.state, h.core.model, h.core.next_deadline())
    with pytest.raises(LifecycleError):
        h.send(LoadFinished(op=999, instance_id="x"))
    with pytest.raises(LifecycleError):
        h.send(UnloadFinished(op=1))  # op 1 was a load, not an unload
    assert (h.core.state, h.core.model, h.core.next_deadline()) == before


def test_state_changes_are_announced() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    assert [(e["from"], e["to"]) for e in h.events("state_changed")] == [
        ("idle", "loading"),
        ("loading", "loaded"),
    ]


def test_L7_stray_of_superseded_load_is_unloaded_only_after_streams_end() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=0.2)  # the load is superseded (L5)
    h.send(StreamStarted(1), at=0.5)  # a client streams from something else meanwhile
    assert h.loads(h.send(Select(B), at=1)) == []  # L30: waits for A's load to land
    out = h.load_ok(first, "stray")
    assert h.unloads(out) == []  # deferred: a stream is open
    (second,) = h.loads(out)
    out = h.send(StreamEnded(1), at=2)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("stray", "superseded")]
    assert second.avoid == ()


def test_L17_load_never_adopts_an_instance_being_unloaded() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(Select(B), at=1)
    h.send(UnloadCommand(request=1), at=1.5)  # give up on B too
    (stray,) = h.unloads(h.load_ok(first, "A-stray"))
    (again,) = h.loads(h.send(Select(A), at=2))
    assert again.avoid == ("A-stray",)
    assert stray.instance_id == "A-stray"
