"""Rules L19-L22 (what LM Studio itself sees; nothing of ours left behind), the
per-selection keep-alive, `explain` and `selection_superseded`. Times are explicit."""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Activity,
    ActivitySource,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    OwnStray,
    Select,
    ServerActivity,
    Settings,
    Shutdown,
    StartLoad,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
)

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b"


def busy(instance: str = A, doing: str = "generating", queued: int = 0) -> ServerActivity:
    return ServerActivity(instance, True, doing, queued)


def idle(instance: str = A, last_used: float | None = None) -> ServerActivity:
    return ServerActivity(instance, False, "idle", 0, last_used)


# --- L19 ---------------------------------------------------------------------


def test_L19_busy_instance_counts_as_in_use_but_not_as_a_client_stream() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    h.send(busy(), at=1)
    assert h.core.state is State.STREAMING
    assert h.core.active_streams == 0 and h.core.server_busy == "generating"
    assert h.core.idle_eject_in(1) is None
    assert h.unloads(h.tick(1000)) == []  # never ejected while LM Studio generates
    h.send(busy(queued=2), at=1001)
    assert h.core.server_busy == "generating, 2 queued"


def test_L19_switch_queues_behind_server_busy_and_runs_when_idle() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=0)
    h.loaded(A)
    h.send(busy(), at=1)
    assert h.send(Select(B), at=2) == [] and h.core.pending == B
    out = h.send(idle(last_used=3), at=3)
    (unload,) = h.unloads(out)
    assert (unload.model, unload.reason, unload.look_first) == (A, "switch", True)
    assert [a.model for a in h.loads(h.unload_ok(unload))] == [B]


def test_L19_last_used_counts_as_activity_for_the_idle_timer() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    h.loaded(A, at=0)
    h.send(idle(last_used=40), at=50)  # a direct client used it at 40, unseen by us
    assert h.core.idle_eject_in(50) == pytest.approx(90)
    h.send(idle(last_used=20), at=60)  # older than ours: changes nothing
    assert h.core.idle_eject_in(60) == pytest.approx(80)
    h.send(Activity(), at=70)
    h.send(idle(last_used=65), at=75)  # ours (70) is later
    assert h.core.idle_eject_in(75) == pytest.approx(95)
    assert h.unloads(h.tick(169)) == []
    assert [u.reason for u in h.unloads(h.tick(170))] == ["idle"]


def test_L19_busy_to_idle_restarts_the_timer_from_the_later_of_ours_and_last_used() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    h.loaded(A)
    h.send(busy(), at=10)
    h.send(idle(last_used=295), at=300)  # seen idle a poll after it ended at 295
    assert h.core.state is State.LOADED
    assert h.core.idle_eject_in(300) == pytest.approx(95)
    h.send(busy(), at=380)
    h.send(idle(), at=410)  # no last_used: from now
    assert h.core.idle_eject_in(410) == pytest.approx(100)


def test_L19_a_stream_ending_while_lm_studio_is_busy_keeps_the_model_in_use() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(busy(), at=2)
    h.send(StreamEnded(1), at=3)
    assert h.core.state is State.STREAMING and h.core.idle_eject_in(3) is None
    h.send(idle(), at=5)
    assert h.core.state is State.LOADED and h.core.idle_eject_in(5) == pytest.approx(100)


def test_L19_busy_stray_is_unloaded_only_once_idle() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(busy("old-A"), at=1)
    assert h.unloads(h.send(OwnStray(C, "old-A"), at=2)) == []
    assert h.core.deferred_unloads == ((C, "old-A", "stray"),)
    (unload,) = h.unloads(h.send(idle("old-A"), at=3))
    assert (unload.instance_id, unload.reason, unload.look_first) == ("old-A", "stray", False)


def test_L19_unload_command_refused_naming_what_the_model_is_doing() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(busy(doing="processingPrompt"), at=1)
    out = h.send(UnloadCommand(request=1), at=2)
    assert h.unloads(out) == []
    (done,) = h.done(out)
    assert done.error is not None and "processingPrompt" in done.error and A in done.error


def test_L19_memory_pressure_and_shutdown_never_unload_a_busy_model() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(busy(), at=1)
    assert h.unloads(h.send(MemoryPressure(), at=2)) == []
    out = h.send(Shutdown(), at=3)
    assert h.unloads(out) == []
    assert h.events("kept_loaded_on_exit", out) == [
        {"model": A, "streams": 0, "doing": "generating"}
    ]


def test_L19_adopted_instance_already_busy_is_in_use_at_once() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.send(busy("A-1"), at=0)
    (load,) = h.loads(h.send(Select(A), at=1))
    h.send(LoadFinished(load.op, "A-1", adopted=True), at=2)
    assert h.core.state is State.STREAMING and h.core.idle_eject_in(2) is None


# --- L20 ---------------------------------------------------------------------


def test_L20_unloads_that_may_be_in_use_look_first_the_others_do_not() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (idle_eject,) = h.unloads(h.tick(10))
    h.unload_ok(idle_eject)
    h.loaded(B, at=20)
    (switch,) = h.unloads(h.send(Select(C), at=21))
    (load_c,) = h.loads(h.unload_ok(switch))
    h.load_ok(load_c)
    (pressure,) = h.unloads(h.send(MemoryPressure(), at=22))
    h.unload_ok(pressure)
    h.loaded(A, at=30)
    (command,) = h.unloads(h.send(UnloadCommand(request=1), at=31))
    h.unload_ok(command)
    h.loaded(B, at=40)
    (exit_,) = h.unloads(h.send(Shutdown(), at=41))
    looks = [(u.reason, u.look_first) for u in (idle_eject, switch, pressure, command, exit_)]
    assert looks == [
        ("idle", True),
        ("switch", True),
        ("memory_pressure", True),
        ("command", True),
        ("exit", False),
    ]


def test_L20_superseded_strays_are_unloaded_without_looking() -> None:
    h = Harness(switch_debounce=0)
    (first,) = h.loads(h.send(Select(A)))
    h.send(UnloadCommand(1), at=1)  # the load is superseded (L5)
    (stray,) = h.unloads(h.load_ok(first, "A-stray"))
    assert (stray.reason, stray.look_first) == ("superseded", False)


def test_L20_deferred_idle_eject_is_dropped_and_rearms_when_idle() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (eject,) = h.unloads(h.tick(10))
    out = h.send(UnloadDeferred(eject.op, "generating", 0), at=10.5)
    assert h.core.state is State.STREAMING and h.core.model == A
    assert h.events("unload_deferred", out)[0]["doing"] == "generating"
    assert h.core.next_deadline() is None  # an idle eject is never forced
    h.send(idle(last_used=30), at=31)
    assert h.core.state is State.LOADED and h.core.idle_eject_in(31) == pytest.approx(9)


def test_L20_deferred_switch_waits_behind_the_generation_then_runs() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=60)
    h.loaded(A)
    (switch,) = h.unloads(h.send(Select(B), at=1))
    h.send(UnloadDeferred(switch.op, "generating", 1), at=1.2)
    assert h.core.state is State.STREAMING and h.core.pending == B
    assert h.core.next_deadline() == pytest.approx(61.2)
    (again,) = h.unloads(h.send(idle(), at=20))
    assert (again.model, again.look_first) == (A, True)
    assert [a.model for a in h.loads(h.unload_ok(again))] == [B]
    assert h.events("switch_forced") == []


def test_L20_switch_is_forced_after_busy_switch_wait() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=120)
    h.loaded(A)
    h.send(busy(doing="generating"), at=5)
    h.send(Select(B), at=10)
    assert h.core.next_deadline() == pytest.approx(130)
    assert h.unloads(h.tick(129.9)) == []
    out = h.tick(130)
    (forced,) = h.unloads(out)
    assert (forced.model, forced.reason, forced.look_first) == (A, "switch", False)
    assert h.events("switch_forced", out) == [
        {"model": A, "instance_id": A, "doing": "generating", "waited_s": 120.0}
    ]
    assert [a.model for a in h.loads(h.unload_ok(forced))] == [B]


def test_L20_busy_switch_wait_zero_waits_forever() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=0)
    h.loaded(A)
    h.send(busy(), at=1)
    h.send(Select(B), at=2)
    assert h.core.next_deadline() is None
    assert h.unloads(h.tick(100_000)) == []


def test_L20_a_client_stream_is_never_forced() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=5)
    h.loaded(A)
    h.send(busy(), at=1)
    h.send(StreamStarted(1), at=2)
    h.send(Select(B), at=3)
    assert h.core.next_deadline() is None
    assert h.unloads(h.tick(1000)) == []
    h.send(StreamEnded(1), at=1001)  # now only LM Studio's activity holds it: the wait starts
    assert h.core.next_deadline() == pytest.approx(1006)
    assert len(h.unloads(h.tick(1006))) == 1


def test_L20_deferred_pressure_eject_is_dropped_and_never_forced() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=1)
    h.loaded(A)
    (eject,) = h.unloads(h.send(MemoryPressure(), at=1))
    h.send(UnloadDeferred(eject.op, "computingEmbedding", 0), at=1.1)
    assert h.core.state is State.STREAMING and h.core.pending is None
    assert h.core.next_deadline() is None and h.unloads(h.tick(500)) == []


def test_L20_deferred_unload_command_is_answered_with_what_the_model_does() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(UnloadCommand(request=7), at=1))
    out = h.send(UnloadDeferred(unload.op, "generating", 3), at=1.1)
    (done,) = h.done(out)
    assert done.request == 7 and done.error is not None
    assert "generating, 3 queued" in done.error
    assert h.core.model == A and h.core.state is State.STREAMING


def test_L20_a_deferred_draft_unload_waits_for_the_draft_to_be_idle() -> None:
    h = Harness(switch_debounce=0, draft_model=C)
    (main,) = h.loads(h.send(Select(A)))
    (draft,) = h.loads(h.load_ok(main))
    h.load_ok(draft, "C-1")
    out = h.send(Select(B), at=1)
    (draft_unload,) = [u for u in h.unloads(out) if u.model == C]
    h.send(UnloadDeferred(draft_unload.op, "generating", 0), at=1.1)
    assert h.core.deferred_unloads == ((C, "C-1", "switch"),)
    assert [u.instance_id for u in h.unloads(h.send(idle("C-1"), at=2))] == ["C-1"]


# --- L21 ---------------------------------------------------------------------


def test_L21_activity_source_is_clients_only_until_told() -> None:
    h = Harness()
    assert h.core.activity_source == "clients only"
    out = h.send(ActivitySource(True), at=1)
    assert h.core.activity_source == "lmstudio"
    assert h.events("activity_source_changed", out) == [{"source": "lmstudio", "reason": None}]
    assert h.events("activity_blind", out) == []


def test_L21_losing_the_source_clears_busy_flags_and_warns_once() -> None:
    h = Harness(switch_debounce=0, idle_timeout=60, busy_switch_wait=0)
    h.send(ActivitySource(True))
    h.loaded(A)
    h.send(busy(), at=1)
    h.send(Select(B), at=2)
    out = h.send(ActivitySource(False, "auth refused"), at=3)
    assert h.core.activity_source == "clients only" and h.core.busy_instances == {}
    assert [u.model for u in h.unloads(out)] == [A]  # a stale busy flag never blocks
    (blind,) = h.events("activity_blind", out)
    assert blind["reason"] == "auth refused" and "proxy" in blind["advice"]
    assert h.events("activity_blind", h.send(ActivitySource(False, "again"), at=4)) == []
    h.send(ActivitySource(True), at=5)
    assert len(h.events("activity_blind", h.send(ActivitySource(False), at=6))) == 1


def test_L21_no_warning_when_idle_eject_is_off() -> None:
    h = Harness(idle_timeout=0)
    out = h.send(ActivitySource(False, "RPC missing"), at=1)
    assert h.events("activity_source_changed", out) == [
        {"source": "clients only", "reason": "RPC missing"}
    ]
    assert h.events("activity_blind", out) == []
    # A keep-alive turns idle eject on for its selection: the warning comes then.
    out = h.send(Select(A, keep_alive=30), at=2)
    assert len(h.events("activity_blind", out)) == 1


# --- L22 ---------------------------------------------------------------------


def test_L22_stray_of_the_wanted_model_is_adopted_when_we_have_none() -> None:
    h = Harness(switch_debounce=0, idle_timeout=50)
    (load,) = h.loads(h.send(Select(A)))
    h.send(LoadFailed(load.op, "timed out", abandoned=True), at=300)
    assert h.core.state is State.IDLE
    out = h.send(OwnStray(A, "A-late"), at=310)  # the abandoned load landed after all
    assert h.unloads(out) == [] and h.loads(out) == []
    assert h.core.state is State.LOADED and h.core.instance_id == "A-late"
    assert h.core.idle_eject_in(310) == pytest.approx(50)
    assert h.core.explain(310).cause == "stray adopted"


def test_L22_after_a_restart_the_journaled_instance_of_the_selection_is_adopted() -> None:
    h = Harness(switch_debounce=0.3)
    h.send(Select(A), at=0)  # the restored selection, still in its debounce
    out = h.send(OwnStray(A, "A-journal"), at=0.1)
    assert h.unloads(out) == [] and h.core.instance_id == "A-journal"
    assert h.loads(h.tick(1)) == [] and h.core.next_deadline() == pytest.approx(1800.1)
    # A journaled instance of another model than the one selected is cleaned up.
    (unload,) = h.unloads(h.send(OwnStray(B, "B-journal"), at=2))
    assert (unload.instance_id, unload.reason) == ("B-journal", "stray")


def test_L22_stray_adopted_during_a_load_supersedes_that_load() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A)))
    out = h.send(OwnStray(A, "A-journal"), at=1)
    assert [c.op for c in h.cancels(out)] == [load.op]
    assert h.core.instance_id == "A-journal" and h.core.state is State.LOADED
    (stray,) = h.unloads(h.load_ok(load, "A-second"))  # its instance is a stray now
    assert (stray.instance_id, stray.reason) == ("A-second", "superseded")


def test_L22_other_strays_are_unloaded_without_looking() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    out = h.send(OwnStray(B, "B-1"), at=1)
    assert [(u.instance_id, u.reason, u.look_first) for u in h.unloads(out)] == [
        ("B-1", "stray", False)
    ]
    # A second instance of the model we have is a stray too: at most one is kept.
    (dup,) = h.unloads(h.send(OwnStray(A, "A-2"), at=2))
    assert dup.instance_id == "A-2" and h.core.instance_id == A


def test_L22_own_stray_is_idempotent() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    assert len(h.unloads(h.send(OwnStray(B, "B-1"), at=1))) == 1
    assert h.unloads(h.send(OwnStray(B, "B-1"), at=2)) == []
    assert h.send(OwnStray(A, A), at=3) == []  # our own main instance: nothing to do
    h.send(StreamStarted(1), at=4)
    h.send(OwnStray(C, "C-1"), at=5)
    h.send(OwnStray(C, "C-1"), at=6)
    assert h.core.deferred_unloads == ((C, "C-1", "stray"),)


def test_L22_stray_unload_deferred_while_a_client_streams() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    assert h.unloads(h.send(OwnStray(B, "B-1"), at=2)) == []
    assert [u.instance_id for u in h.unloads(h.send(StreamEnded(1), at=3))] == ["B-1"]


def test_L22_stray_of_an_unwanted_model_is_unloaded_even_when_idle() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A)))
    h.send(LoadFailed(load.op, "no such model"), at=1)  # not abandoned: not wanted any more
    assert [u.instance_id for u in h.unloads(h.send(OwnStray(A, "A-1"), at=2))] == ["A-1"]


def test_L22_owned_instances_lists_what_the_core_considers_its_own() -> None:
    h = Harness(switch_debounce=0, draft_model=C)
    (main,) = h.loads(h.send(Select(A)))
    (draft,) = h.loads(h.load_ok(main, "A-1"))
    h.load_ok(draft, "C-1")
    h.send(OwnStray(B, "B-1"), at=1)
    assert h.core.owned_instances() == {"A-1": A, "C-1": C, "B-1": B}


# --- keep-alive (select --keep-alive) ----------------------------------------------


def test_keep_alive_overrides_the_idle_timeout_for_this_selection() -> None:
    h = Harness(switch_debounce=0, idle_timeout=1800)
    (load,) = h.loads(h.send(Select(A, keep_alive=30)))
    h.load_ok(load)
    assert h.core.keep_alive == 30 and h.core.idle_eject_in(0) == pytest.approx(30)
    h.send(Select(A), at=10)  # the same model again keeps its keep-alive
    assert h.core.idle_eject_in(10) == pytest.approx(30)
    assert [u.reason for u in h.unloads(h.tick(40))] == ["idle"]


def test_keep_alive_zero_never_ejects() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    (load,) = h.loads(h.send(Select(A, keep_alive=0)))
    h.load_ok(load)
    assert h.core.idle_eject_in(0) is None and h.unloads(h.tick(10_000)) == []


def test_keep_alive_ends_with_the_next_selection_of_another_model() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    (load,) = h.loads(h.send(Select(A, keep_alive=0)))
    h.load_ok(load)
    (unload,) = h.unloads(h.send(Select(B), at=1))
    (load_b,) = h.loads(h.unload_ok(unload))
    h.load_ok(load_b)
    assert h.core.keep_alive is None and h.core.idle_eject_in(1) == pytest.approx(100)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_keep_alive_must_be_a_finite_non_negative_number(bad: float) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        Select(A, keep_alive=bad)


def test_busy_switch_wait_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="busy_switch_wait"):
        Settings(busy_switch_wait=-1)


# --- explain: status says why ------------------------------------------------------


def test_explain_says_why_the_model_went_idle() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    h.unload_ok(h.unloads(h.tick(10))[0])
    why = h.core.explain(12)
    assert (why.state, why.cause, why.cause_at, why.waiting_for) == ("idle", "idle eject", 10, None)


def test_explain_gives_the_load_in_flight_and_its_elapsed_time() -> None:
    h = Harness(switch_debounce=0.3)
    h.send(Select(A), at=1)
    why = h.core.explain(1.1)
    assert (why.waiting_for, why.waiting_until, why.pending) == ("debounce", 1.3, A)
    h.tick(1.3)
    why = h.core.explain(5.3)
    assert (why.state, why.in_flight, why.in_flight_since) == ("loading", "load", 1.3)
    assert why.in_flight_s == pytest.approx(4.0) and why.waiting_for == "load in flight"


def test_explain_names_failures_streams_and_server_activity() -> None:
    h = Harness(switch_debounce=0, busy_switch_wait=60)
    (load,) = h.loads(h.send(Select(A)))
    h.load_err(load, "model crashed")
    assert h.core.explain(1).cause == "load failed: model crashed"
    h.loaded(B, at=2)
    h.send(StreamStarted(1), at=3)
    assert h.core.explain(3).waiting_for == "1 stream to end"
    h.send(StreamEnded(1), at=4)
    h.send(busy(B), at=5)
    h.send(Select(C), at=6)
    why = h.core.explain(7)
    assert (why.waiting_for, why.waiting_until) == ("server busy: generating", 66)
    assert (why.server_busy, why.activity_source, why.pending) == ("generating", "clients only", C)
    (unload,) = h.unloads(h.tick(66))
    assert h.core.explain(66).cause == "forced switch"
    h.send(UnloadCommand(request=1), at=66.5)  # gives up on C: stays idle after the unload
    h.unload_ok(unload)
    assert (h.core.state, h.core.explain(67).cause) == (State.IDLE, "forced switch")


# --- selection_superseded -----------------------------------------------------


def test_selection_swallowed_by_the_debounce_is_reported() -> None:
    h = Harness(switch_debounce=0.3)
    h.send(Select(A), at=0)
    h.send(Select(B), at=0.1)
    h.send(Select(B), at=0.15)  # the same again swallows nothing
    h.send(Select(C), at=0.2)
    assert h.events("selection_superseded") == [{"model": A, "by": B}, {"model": B, "by": C}]
    assert [a.model for a in h.loads(h.tick(0.5))] == [C]


def test_selection_swallowed_behind_an_unload_is_reported() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(Select(B), at=1)  # unloading A, B next
    out = h.send(Select(C), at=2)
    assert h.events("selection_superseded", out) == [{"model": B, "by": C}]
    assert isinstance(h.loads(h.unload_ok(h.unloads()[0]))[0], StartLoad)
