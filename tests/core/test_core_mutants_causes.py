"""Causes `why` shows and what an engine change still cleans up (L4, L5, L11, L13, L22).

Written against mutants of machine.py and records.py that only a replayed property-test
failure killed (docs/testing.md, "Mutation testing of the core"): no other test checked
these effects."""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import (
    EngineChanged,
    OwnStray,
    Select,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadFailed,
    UnloadFinished,
)

A, B, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "draft/tiny-0.5b"


def test_L11_a_failed_idle_eject_says_idle_eject_and_the_error() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (eject,) = h.unloads(h.tick(10))
    h.send(UnloadFailed(eject.op, "boom"), at=11)
    why = h.core.explain(12)
    assert (why.state, why.model, why.cause) == ("idle", None, "idle eject (boom)")


def test_L18_an_unloaded_model_leaves_no_adopted_flag_behind() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    (unload,) = h.unloads(h.send(UnloadCommand(1), at=1))
    h.unload_ok(unload)
    assert h.core.model is None and h.core.adopted is False


def test_L5_selecting_again_a_superseded_load_says_resumed_load() -> None:
    h = Harness(switch_debounce=0)
    h.send(Select(A), at=0)
    h.send(UnloadCommand(1), at=1)  # the load is superseded (L5)
    h.send(Select(A), at=2)
    why = h.core.explain(3)
    assert (why.state, why.cause, why.in_flight) == ("loading", "resumed load", "load")


def test_L13_L22_an_engine_change_still_unloads_a_stray_that_waited_for_streams() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(OwnStray(B, "B-old"), at=2)  # deferred: a stream is open (L7)
    out = h.send(EngineChanged("ollama"), at=3)  # streams are forgotten with the engine
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(B, "B-old", "stray")]


def test_L11_a_failed_unload_is_announced_and_kept_as_the_last_error() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10)
    h.loaded(A)
    (eject,) = h.unloads(h.tick(10))
    out = h.send(UnloadFailed(eject.op, "boom"), at=11)
    assert h.events("unload_failed", out) == [{"model": A, "reason": "idle", "error": "boom"}]
    assert h.core.last_error == f"unload of {A} failed: boom"


def test_L4_L15_the_drafts_unload_ending_first_does_not_start_the_switchs_load() -> None:
    h = Harness(switch_debounce=0, draft_model=D)
    h.loaded(A)
    h.load_ok(h.loads()[-1], "d-1")  # the draft goes with A (L15)
    out = h.send(Select(B), at=1)  # L4: A (and its draft) are unloaded first
    by_model = {u.model: u for u in h.unloads(out)}
    out = h.send(UnloadFinished(by_model[D].op), at=2)
    assert h.loads(out) == [] and h.core.model == A and h.core.state.value == "unloading"
    assert [a.model for a in h.loads(h.unload_ok(by_model[A]))] == [B]


def test_L7_L8_one_of_two_streams_ending_unloads_nothing_and_the_last_says_why() -> None:
    h = Harness(switch_debounce=0)
    h.loaded(A)
    h.send(StreamStarted(1), at=1)
    h.send(StreamStarted(2), at=1)
    h.send(OwnStray(B, "B-old"), at=2)  # L22: waits for the streams (L7)
    why = h.core.explain(2)
    assert (why.state, why.cause, why.cause_at) == ("streaming", "stream started", 1)
    out = h.send(StreamEnded(1), at=3)
    assert h.unloads(out) == [] and h.core.state.value == "streaming"
    out = h.send(StreamEnded(2), at=4)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("B-old", "stray")]
    why = h.core.explain(5)
    assert (why.state, why.cause, why.cause_at) == ("loaded", "stream ended", 4)


def test_L22_a_model_loading_has_no_instance_of_ours_yet() -> None:
    h = Harness(switch_debounce=0)
    h.send(Select(A), at=0)
    assert h.core.owned_instances() == {}
