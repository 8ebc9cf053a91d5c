"""The unload command's answers (L18, L20) and an adopted stray's announcement (L22).

Written against surviving mutants of ledger.py and server_rules.py (docs/testing.md,
"Mutation testing of the core"): each test checks the text a person reads."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import (
    CommandDone,
    OwnStray,
    Select,
    ServerActivity,
    ServerSnapshot,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
    UnloadFailed,
)

A, B, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "draft/tiny-0.5b"


def test_L18_a_failed_unload_command_names_the_model_before_the_error() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(UnloadCommand(3), at=1))
    (done,) = h.done(h.send(UnloadFailed(unload.op, "HTTP 500"), at=2))
    assert (done.request, done.error) == (3, f"{A}: HTTP 500")


def test_L20_a_deferred_unload_command_says_why_without_repeating_the_model() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(UnloadCommand(3), at=1))
    (done,) = h.done(h.send(UnloadDeferred(unload.op, "generating"), at=2))
    assert done.error is not None and done.error.startswith(f"{A} is in use on the server")


def test_L18_a_command_on_two_instances_reports_both_failures() -> None:
    h = Harness(switch_debounce=0)
    h.send(ServerSnapshot({B: ("b-1", "b-2")}), at=0)
    out = h.send(UnloadCommand(4, B), at=1)
    first, second = h.unloads(out)
    assert h.done(h.send(UnloadFailed(first.op, "e1"), at=2)) == []
    (done,) = h.done(h.send(UnloadFailed(second.op, "e2"), at=3))
    assert done.error == f"{B}: e1; {B}: e2"


def test_L22_an_adopted_stray_is_announced_with_its_instance() -> None:
    h = Harness(switch_debounce=0.3)
    h.send(Select(A), at=0)  # still in its debounce
    out = h.send(OwnStray(A, "A-9"), at=0.1)
    assert h.events("stray_adopted", out) == [{"model": A, "instance_id": "A-9"}]
    assert h.core.instance_id == "A-9"


def test_L18_L15_a_command_naming_the_draft_unloads_it_before_any_look_at_the_server() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    h.loaded(A)
    h.load_ok(h.loads()[-1], "d-1")  # the draft D goes with A (L15)
    out = h.send(UnloadCommand(1, D), at=1)  # no snapshot yet: the core knows its draft
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(D, "d-1", "command")]
    assert h.core.draft is None and h.core.model == A


def test_L7_two_streams_are_counted_in_the_plural_in_status_and_the_commands_answer() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(StreamStarted(2), at=1)
    h.send(Select(B), at=2)  # queued behind the streams (L7)
    assert h.core.explain(3).waiting_for == "2 streams to end"
    (done,) = h.done(h.send(UnloadCommand(1), at=3))
    assert done.error == (
        "2 streams open: lmkeeperd never unloads under a stream; try again when they end"
    )


def test_L18_L15_a_command_naming_another_model_leaves_the_draft_alone() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    h.loaded(A)
    h.load_ok(h.loads()[-1], "d-1")  # the draft D goes with A (L15)
    h.send(ServerSnapshot({A: (A,), D: ("d-1",), B: ("b-gui",)}), at=1)
    out = h.send(UnloadCommand(1, B), at=2)
    assert [(u.model, u.instance_id) for u in h.unloads(out)] == [(B, "b-gui")]
    assert h.core.draft == (D, "d-1")


def test_L18_a_command_naming_a_model_not_on_the_server_is_answered_at_once() -> None:
    h = Harness(switch_debounce=0)
    out = h.send(UnloadCommand(7, B), at=1)
    assert h.done(out) == [CommandDone(7, f"model {B!r} is not loaded on the server")]


def test_L18_L19_a_command_naming_a_busy_model_says_what_lm_studio_does_with_it() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)  # ours, idle: the error is about B's instance, not ours
    h.send(ServerSnapshot({A: (A,), B: ("b-gui",)}), at=1)
    h.send(ServerActivity("b-gui", True, "generating", 1), at=2)
    out = h.send(UnloadCommand(7, B), at=3)
    assert h.unloads(out) == []
    assert h.done(out) == [
        CommandDone(
            7,
            f"{B} is in use on the server (generating, 1 queued): lmkeeperd never unloads "
            "a model in use; try again when it is idle",
        )
    ]


def test_L18_L19_a_command_unloads_the_free_instances_and_names_the_busy_one() -> None:
    h = Harness(switch_debounce=0)
    h.send(ServerSnapshot({B: ("b-1", "b-2")}), at=0)
    h.send(ServerActivity("b-1", True, "processingPrompt"), at=1)
    (unload,) = h.unloads(h.send(UnloadCommand(7, B), at=2))
    assert unload.instance_id == "b-2"
    assert h.done(h.unload_ok(unload)) == [
        CommandDone(
            7,
            f"{B} is in use on the server (processingPrompt): lmkeeperd never unloads "
            "a model in use; try again when it is idle",
        )
    ]


def test_L18_with_nothing_loaded_the_command_says_so() -> None:
    h = Harness(switch_debounce=0)
    assert h.done(h.send(UnloadCommand(5), at=1)) == [
        CommandDone(5, "nothing is loaded by lmkeeperd")
    ]


def test_L18_L5_a_command_during_a_load_drops_it_answers_and_says_why() -> None:
    h = Harness(switch_debounce=0)
    (load,) = h.loads(h.send(Select(A), at=0))
    out = h.send(UnloadCommand(5), at=1)
    assert h.done(out) == [CommandDone(5)] and [c.op for c in h.cancels(out)] == [load.op]
    why = h.core.explain(2)
    assert (why.state, why.cause, why.cause_at) == ("idle", "unloaded by command", 1)


def test_L18_a_command_while_our_model_unloads_is_answered_when_that_unload_is_done() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (eject,) = h.unloads(h.tick(10))
    out = h.send(UnloadCommand(5), at=11)
    assert h.done(out) == [] and h.unloads(out) == []  # it waits for the eject in flight
    assert h.done(h.unload_ok(eject)) == [CommandDone(5)]


def test_L18_L17_a_model_unloaded_by_command_is_not_restored_after_an_outage() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(UnloadCommand(5), at=1))
    why = h.core.explain(2)
    assert (why.in_flight, why.in_flight_since, why.cause) == ("unload", 1, "unloaded by command")
    h.unload_ok(unload)
    assert h.loads(h.send(ServerSnapshot({}, after_outage=True), at=3)) == []


def test_L18_L22_a_second_command_for_a_resident_waits_for_the_unload_already_sent() -> None:
    # Two `unload B` in a row: one unload of B's instance, and both answered by it. A
    # second unload of the same instance once outlived a busy answer to the first, and
    # took the instance away from under B, selected again meanwhile (found by a property
    # test).
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(B, at=0)
    h.loaded(A, at=1)  # B beside A
    h.send(ServerSnapshot({A: (A,), B: (B,)}), at=1.5)
    (unload,) = h.unloads(h.send(UnloadCommand(1, B), at=2))
    assert h.unloads(h.send(UnloadCommand(2, B), at=2.1)) == []
    done = h.done(h.send(UnloadDeferred(unload.op, "generating", 1), at=3))  # B busy
    assert sorted(d.request for d in done) == [1, 2] and all(d.error for d in done)
    h.send(Select(B), at=4)  # still a resident, in use: selecting it loads nothing (L24)
    assert (h.core.model, h.core.instance_id) == (B, B)
    assert h.unloads() == [unload]  # never a second unload of it
