"""Several resident models (L24, L25, L28) with `max_loaded` above 1. Times are explicit.

With the default `max_loaded` 1 every other rule test is L4's one-at-a-time switch.
"""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Activity,
    EngineChanged,
    Select,
    ServerActivity,
    Settings,
    State,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
)

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b"


def two(**settings: object) -> Harness:
    return Harness(switch_debounce=0, max_loaded=2, **settings)


def test_L24_a_new_model_loads_beside_the_current_one_while_there_is_room() -> None:
    h = two()
    h.loaded(A, at=0)
    out = h.send(Select(B), at=1)
    assert h.unloads(out) == [] and [a.model for a in h.loads(out)] == [B]
    (load,) = h.loads(out)
    h.load_ok(load)
    assert (h.core.model, h.core.state) == (B, State.LOADED)
    assert h.core.residents == {A: A}
    assert h.core.owned_instances() == {A: A, B: B}


def test_L24_selecting_a_resident_loads_nothing_and_makes_it_current() -> None:
    h = two(idle_timeout=100)
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    out = h.send(Select(A), at=50)
    assert h.loads(out) == [] and h.unloads(out) == []
    assert h.events("resident_selected", out) == [{"model": A, "instance_id": A}]
    assert (h.core.model, h.core.instance_id, h.core.state) == (A, A, State.LOADED)
    assert h.core.residents == {B: B}
    assert h.core.idle_eject_in(50) == pytest.approx(100)  # its last use is now
    assert h.core.explain(51).cause == "resident selected"


def test_L25_the_least_recently_used_idle_resident_makes_room() -> None:
    h = two()
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside B, last used at 1 (current until then)
    h.send(Activity(), at=2)  # B used at 2
    out = h.send(Select(C), at=3)
    # A, used least recently, goes; B stays beside C.
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]
    assert [a.model for a in h.loads(out)] == [C]
    assert h.core.residents == {B: B} and h.core.model == C


def test_L25_when_the_current_model_is_the_one_to_go_it_is_unloaded_first() -> None:
    h = Harness(switch_debounce=0, pinned=(A,))  # pinned do not count: B fills max_loaded 1
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A, pinned, stays whatever its last use
    out = h.send(Select(C), at=2)
    assert h.loads(out) == []  # L4: unload first, then load
    (unload,) = h.unloads(out)
    assert (unload.model, unload.reason) == (B, "switch")
    assert h.core.state is State.UNLOADING and h.core.pending == C
    assert [a.model for a in h.loads(h.unload_ok(unload))] == [C]
    assert h.core.residents == {A: A}


def test_L25_a_busy_resident_makes_the_switch_wait_until_it_is_idle() -> None:
    h = Harness(switch_debounce=0, pinned=(B,))  # A fills max_loaded 1; B does not count
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # B current and pinned: never evicted
    h.send(ServerActivity(A, True, "generating", 0, 2), at=2)  # A busy for LM Studio
    out = h.send(Select(C), at=3)
    assert h.loads(out) == [] and h.unloads(out) == []
    assert h.core.pending == C
    out = h.send(ServerActivity(A, False, "idle", 0, 4), at=4)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]
    assert [a.model for a in h.loads(out)] == [C]
    assert h.core.residents == {B: B}


def test_L25_nothing_is_evicted_while_a_stream_is_open() -> None:
    h = two()
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.send(StreamStarted(1), at=2)
    assert h.unloads(h.send(Select(C), at=3)) == []  # L7: queued
    out = h.send(StreamEnded(1), at=4)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]


def test_L28_each_resident_has_its_own_idle_timer() -> None:
    h = two(idle_timeout=10)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A's own timer runs from 1, when it stopped being current
    h.send(Activity(), at=5)  # B's from 5
    assert h.core.next_deadline() == pytest.approx(11)
    out = h.tick(11)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "idle")]
    assert h.core.residents == {} and (h.core.model, h.core.state) == (B, State.LOADED)
    assert [(u.model, u.reason) for u in h.unloads(h.tick(15))] == [(B, "idle")]


def test_L28_a_stream_naming_one_resident_leaves_the_others_timers_running() -> None:
    h = two(idle_timeout=10)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # B, current, idles out at 11
    h.send(StreamStarted(1, A), at=2)  # A's use, not B's
    assert h.core.state is State.LOADED and h.core.idle_eject_in(2) == pytest.approx(9)
    out = h.tick(11)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(B, "idle")]
    (unload,) = h.unloads(out)
    h.unload_ok(unload)
    assert h.unloads(h.tick(50)) == [] and h.core.residents == {A: A}  # its stream is open
    assert h.unloads(h.send(StreamEnded(1), at=60)) == []
    assert h.unloads(h.tick(69.9)) == []  # A's own timer runs from its last use, 60
    assert [(u.model, u.reason) for u in h.unloads(h.tick(70))] == [(A, "idle")]


def test_L28_a_resident_in_use_is_not_idled_out() -> None:
    h = two(idle_timeout=10, pinned=(B,))  # B, current, never idles out
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    h.send(ServerActivity(A, True, "generating", 0, 9), at=9)
    assert h.unloads(h.tick(11)) == []  # due, but in use: counted again from 11
    h.send(ServerActivity(A, False, "idle", 0, 12), at=12)
    assert h.unloads(h.tick(20)) == []
    assert [(u.model, u.reason) for u in h.unloads(h.tick(21))] == [(A, "idle")]


def test_L28_pinned_models_never_idle_out_and_are_never_evicted() -> None:
    h = Harness(switch_debounce=0, idle_timeout=10, pinned=(A,))
    h.loaded(A, at=0)
    assert h.core.idle_eject_in(0) is None and h.unloads(h.tick(100)) == []
    h.loaded(B, at=101)
    out = h.send(Select(C), at=102)
    (unload,) = h.unloads(out)
    assert (unload.model, unload.reason) == (B, "switch")  # never A
    (load,) = h.loads(h.unload_ok(unload))
    h.load_ok(load)
    out = h.tick(500)
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(C, "idle")]
    assert h.core.residents == {A: A}


def test_L28_a_pinned_models_superseded_selection_load_lands_as_the_pinned_resident() -> None:
    h = two(pinned=(A,))
    (load,) = h.loads(h.send(Select(A), at=0))  # a selection's load of the pinned model
    h.send(EngineChanged("ollama"), at=1)  # L13: waited for no more (superseded)
    h.send(EngineChanged("lmstudio"), at=2)
    out = h.load_ok(load)  # it lands: never unloaded unasked
    assert h.unloads(out) == [] and h.events("pinned_loaded", out) == [{"model": A}]
    assert h.core.residents == {A: A} and h.core.idle_eject_in(3) is None


def test_L24_a_resident_unloaded_by_name_leaves_the_residents() -> None:
    h = two()
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    out = h.send(UnloadCommand(1, A), at=2)
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(A, A, "command")]
    assert h.core.residents == {} and h.core.model == B
    (unload,) = h.unloads(out)
    assert [d.error for d in h.done(h.unload_ok(unload))] == [None]


def test_L24_a_resident_found_busy_by_its_unload_command_stays_a_resident() -> None:
    h = two()
    h.loaded(A, at=0)
    h.loaded(B, at=1)
    (unload,) = h.unloads(h.send(UnloadCommand(1, A), at=2))
    out = h.send(UnloadDeferred(unload.op, "generating", 0), at=3)  # L20: it was busy
    (done,) = h.done(out)
    assert done.error is not None and "in use on the server (generating)" in done.error
    assert h.core.residents == {A: A}


def test_max_loaded_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_loaded must be at least 1, got 0"):
        Settings(max_loaded=0)
