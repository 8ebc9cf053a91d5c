"""LM Studio's view and activity (L17-L22): what the core says about it.

Written against surviving mutants of server_rules.py (docs/testing.md, "Mutation testing
of the core"): each test checks a Notify field or an action the mutant changed."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import (
    Select,
    ServerActivity,
    ServerSnapshot,
    Settings,
    SettingsChanged,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
)

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


def test_L18_a_resident_gone_from_the_server_is_announced_and_forgotten() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A)
    h.load_ok(h.loads(h.send(Select(B), at=1))[0])  # A stays resident beside B
    out = h.send(ServerSnapshot({B: (B,)}), at=2)
    assert h.events("model_vanished", out) == [{"model": A}]
    assert h.core.residents == {} and h.core.model == B and h.unloads(out) == []


def test_L18_L15_the_current_model_vanishing_gives_up_its_draft_load() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    h.loaded(A)
    draft = h.loads()[-1]  # D's load in flight
    out = h.send(ServerSnapshot({}), at=2)
    assert h.events("model_vanished", out) == [{"model": A}]
    assert [c.op for c in h.cancels(out)] == [draft.op]
    why = h.core.explain(3)
    assert (why.state, why.cause, why.cause_at) == ("idle", "model vanished", 2)


def test_L18_L7_a_switch_queued_behind_a_stream_starts_when_the_model_vanishes() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(Select(B), at=2)  # queued behind the stream (L7)
    out = h.send(ServerSnapshot({}), at=5)  # A unloaded by hand
    assert [load.model for load in h.loads(out)] == [B]
    why = h.core.explain(6)
    assert (why.in_flight, why.in_flight_since) == ("load", 5)


def test_L19_busy_on_the_server_is_the_cause_and_one_queued_request_counts() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(ServerActivity(A, True, "processingPrompt", 1), at=2)
    why = h.core.explain(3)
    assert (why.state, why.cause) == ("streaming", "server busy: processingPrompt")
    assert h.core.server_busy == "processingPrompt, 1 queued"


def test_L19_an_unload_command_on_a_busy_model_says_what_it_is_doing() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(ServerActivity(A, True, "generating"), at=2)
    (done,) = h.done(h.send(UnloadCommand(7), at=3))
    assert done.request == 7
    assert done.error == (
        f"{A} is in use on the server (generating): lmkeeperd never unloads a model "
        "in use; try again when it is idle"
    )


def test_L19_server_idle_restarts_the_timer_from_our_later_use() -> None:
    h = Harness(switch_debounce=0, idle_timeout=100)
    h.loaded(A)
    h.send(StreamStarted(1), at=10)
    h.send(ServerActivity(A, True, "generating"), at=20)
    h.send(StreamEnded(1), at=50)  # our last use; LM Studio still busy (L19)
    h.send(ServerActivity(A, False, "idle", 0, 30), at=60)  # its last use is earlier
    why = h.core.explain(61)
    assert (why.state, why.cause, why.idle_eject_at) == ("loaded", "server idle", 150)


def test_L19_lm_studios_last_use_starts_a_timer_that_was_not_running() -> None:
    # A switch deferred by LM Studio (L20) stops the idle timer; with auto_load turned off
    # the queued switch is dropped when the server goes idle and A stays loaded with no
    # last use known. LM Studio's next report of A's last use restarts the timer from it.
    h = Harness(switch_debounce=0, idle_timeout=100, busy_switch_wait=0)
    h.loaded(A)
    (switch,) = h.unloads(h.send(Select(B), at=1))
    h.send(UnloadDeferred(switch.op, "generating"), at=2)
    h.send(SettingsChanged(Settings(switch_debounce=0, idle_timeout=100, auto_load=False)), at=3)
    h.send(ServerActivity(A, False), at=4)
    assert h.core.state is State.LOADED and h.core.next_deadline() is None
    h.send(ServerActivity(A, False, "idle", 0, 8), at=10)
    assert h.core.next_deadline() == 108


def test_L20_an_unload_found_busy_says_which_model_instance_and_reason() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    (load,) = h.loads(h.send(Select(A), at=0))
    h.load_ok(load, "A-1")
    (eject,) = h.unloads(h.tick(10))
    out = h.send(UnloadDeferred(eject.op, "generating", 2), at=11)
    assert h.events("unload_deferred", out) == [
        {"model": A, "instance_id": "A-1", "reason": "idle", "doing": "generating, 2 queued"}
    ]


def test_L20_L17_an_idle_eject_found_busy_says_so_and_keeps_the_model_wanted() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (eject,) = h.unloads(h.tick(10))
    h.send(UnloadDeferred(eject.op, "generating", 2), at=11)
    why = h.core.explain(12)
    assert (why.state, why.cause, why.cause_at) == (
        "streaming",
        "server busy: generating, 2 queued",
        11,
    )
    out = h.send(ServerSnapshot({}, after_outage=True), at=13)  # LM Studio restarted
    assert [a.model for a in h.loads(out)] == [A]  # still wanted: loaded again


def test_L18_L20_an_unload_command_found_busy_leaves_the_model_unwanted() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(UnloadCommand(1), at=1))
    out = h.send(UnloadDeferred(unload.op, "generating"), at=2)
    assert [d.request for d in h.done(out)] == [1] and h.done(out)[0].error
    out = h.send(ServerSnapshot({}, after_outage=True), at=3)  # LM Studio restarted
    assert h.loads(out) == []  # asked gone: not restored after the outage


def test_L4_L20_a_model_selected_back_while_its_unload_was_found_busy_stays() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (unload,) = h.unloads(h.send(Select(B), at=1))
    h.send(Select(A), at=2)  # back to A while its unload is in flight (L4)
    h.send(UnloadDeferred(unload.op, "generating"), at=3)  # busy: A stays ours
    assert h.core.pending is None
    out = h.send(ServerActivity(A, busy=False), at=4)
    assert h.loads(out) == [] and h.unloads(out) == []
    assert (h.core.model, h.core.state, h.core.idle_eject_in(4)) == (A, State.LOADED, 10)
