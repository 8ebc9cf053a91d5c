"""A restart with several residents (L22, L28) and pinned keys changed by a config reload
(L28, L30). Times are explicit.

After a `kill -9` the daemon's journal reports each instance lmkeeperd loaded and the new
core does not hold as `OwnStray`; the restored selection waits in its debounce.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    ModelEstimates,
    OwnStray,
    Select,
    ServerActivity,
    ServerSnapshot,
    SettingsChanged,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
    UnloadDeferred,
)

A, B, C = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b"


def restarted(**settings: object) -> Harness:
    """A fresh core whose restored selection (B) waits in its debounce."""
    h = Harness(switch_debounce=0.3, idle_timeout=100, **settings)
    h.send(ServerSnapshot({A: ("A-j",), B: ("B-j",)}, after_outage=True), at=0)
    h.send(Select(B), at=0)
    return h


def _i(model: str) -> str:
    """The instance the journal reports for `model`."""
    return "A-j" if model == A else "B-j"


# --- L22, L28: the residents journaled before a kill -9 --------------------------------


@pytest.mark.parametrize("first", [A, B])
def test_L28_a_restart_keeps_a_journaled_resident_beside_the_restored_selection(
    first: str,
) -> None:
    h = restarted(max_loaded=2)
    second = B if first == A else A
    out = h.send(OwnStray(first, _i(first)), at=0.1)
    out += h.send(OwnStray(second, _i(second)), at=0.2)
    assert h.unloads(out) == [] and h.loads(out) == []
    assert {e["model"] for e in h.events("stray_adopted", out)} == {A, B}
    assert (h.core.model, h.core.instance_id) == (B, "B-j")
    assert h.core.residents == {A: "A-j"}
    assert h.core.owned_instances() == {"A-j": A, "B-j": B}
    out = h.tick(1)  # the debounce of B falls due: B is held, nothing to do
    assert h.loads(out) == [] and h.unloads(out) == []
    (view_a,) = [v for v in h.core.residents_view() if v.model == A]
    assert view_a.idle_deadline == pytest.approx(100 + (0.1 if first == A else 0.2))


@pytest.mark.parametrize("first", [A, B])
def test_L28_a_kept_stray_is_the_first_resident_to_go_for_room(first: str) -> None:
    h = restarted(max_loaded=2)
    h.send(OwnStray(first, _i(first)), at=0.1)
    h.send(OwnStray(B if first == A else A, _i(B if first == A else A)), at=0.2)
    out = h.send(Select(C), at=5)
    out += h.tick(6)
    assert [(u.model, u.instance_id, u.reason) for u in h.unloads(out)] == [(A, "A-j", "switch")]
    assert [e["reason"] for e in h.events("evicted", out)] == ["max_loaded"]


def test_L28_a_kept_stray_idles_out_on_its_own_timer_counted_from_the_restart() -> None:
    h = restarted(max_loaded=2)
    h.send(OwnStray(A, "A-j"), at=0.5)
    h.send(OwnStray(B, "B-j"), at=0.6)
    h.send(StreamStarted(1, B), at=50)
    h.send(StreamEnded(1), at=90)
    assert h.unloads(h.tick(100)) == []
    assert [(u.instance_id, u.reason) for u in h.unloads(h.tick(100.5))] == [("A-j", "idle")]
    assert (h.core.model, h.core.residents) == (B, {})


def test_L22_a_journaled_instance_that_was_being_unloaded_is_unloaded_never_kept() -> None:
    # The journal held an unload of it when the daemon died (a switch's, or an unload
    # command's for a model lmkeeperd never loaded): room or not, it is not a resident.
    h = restarted(max_loaded=3)
    out = h.send(OwnStray(A, "A-j", leaving=True), at=0.1)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-j", "stray")]
    assert h.events("stray_adopted", out) == [] and h.core.residents == {}
    out = h.send(OwnStray(C, "C-j"), at=0.2)  # the same room, not on its way out: kept
    assert h.unloads(out) == [] and h.core.residents == {C: "C-j"}


def test_L22_a_journaled_instance_being_unloaded_is_adopted_when_it_is_the_selection() -> None:
    h = restarted(max_loaded=3)
    out = h.send(OwnStray(B, "B-j", leaving=True), at=0.1)  # B is the restored selection
    assert h.unloads(out) == [] and (h.core.model, h.core.instance_id) == (B, "B-j")


def test_L22_a_stray_kept_for_the_load_of_its_model_goes_once_that_load_lands_elsewhere() -> None:
    # While A loads, a stray of A waits: the load may adopt it (L22). It landed as another
    # instance, and its draft now loads: the stray goes at once, never two of A.
    h = Harness(switch_debounce=0, draft_model="d")
    (load,) = h.loads(h.send(Select(A), at=0))
    h.send(Select(B), at=0.05)  # waits for A's load (L30): A's stray is not wanted
    h.send(StreamStarted(1), at=0.1)  # L7: the stray's unload waits for the stream
    assert h.events("stray_found", h.send(OwnStray(A, "A-old"), at=0.2)) != []
    assert h.unloads(h.send(StreamEnded(1), at=0.3)) == []  # A still loading: kept for it
    h.send(Select(A), at=0.4)  # A after all: nothing waits behind its load
    out = h.load_ok(load, "A-new")
    assert [a.model for a in h.loads(out)] == ["d"]
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-old", "stray")]


def test_L22_L30_an_abandoned_load_that_lands_beside_its_resident_leaves_the_budget() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, budget_gb=20)
    h.send(ModelEstimates({A: 5, B: 3}))
    (load,) = h.loads(h.send(Select(A), at=0))
    h.load_err(load, "timed out", abandoned=True)  # A may still land: 5 GB counted (L30)
    h.loaded(A, at=1)  # selected again, it lands as another instance
    h.loaded(B, at=2)  # A beside B
    assert h.core.budget_used_gb() == pytest.approx(13)
    out = h.send(OwnStray(A, "A-late"), at=3)  # the abandoned load lands: an extra instance
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-late", "stray")]
    h.unload_ok(h.unloads(out)[0])
    assert h.core.budget_used_gb() == pytest.approx(8)  # it lands no more


def test_L22_a_journaled_stray_past_max_loaded_is_unloaded() -> None:
    h = restarted(max_loaded=2)
    h.send(OwnStray(A, "A-j"), at=0.1)
    out = h.send(OwnStray(C, "C-j"), at=0.2)  # B (selected) + A fill max_loaded 2
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("C-j", "stray")]
    assert h.events("stray_found", out) == [{"model": C, "instance_id": "C-j"}]
    assert h.core.residents == {A: "A-j"}


def test_L22_a_journaled_stray_that_does_not_fit_the_budget_is_unloaded() -> None:
    h = restarted(max_loaded=3, budget_gb=10)
    h.send(ModelEstimates({A: 6, B: 6}), at=0)
    out = h.send(OwnStray(A, "A-j"), at=0.1)  # B, selected, takes 6 of 10 GB
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-j", "stray")]


def test_L22_with_max_loaded_1_a_journaled_stray_beside_nothing_is_unloaded() -> None:
    h = Harness(switch_debounce=0)
    out = h.send(OwnStray(A, "A-j"), at=1)  # nothing selected: the one place stays free
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-j", "stray")]


def test_L22_a_stray_of_a_model_held_or_loading_is_unloaded_never_two_instances() -> None:
    h = Harness(switch_debounce=0, max_loaded=3)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside B
    out = h.send(OwnStray(A, "A-2"), at=2)  # a resident's model
    out += h.send(OwnStray(B, "B-2"), at=2)  # the current model
    assert [u.instance_id for u in h.unloads(out)] == ["A-2", "B-2"]
    assert [a.model for a in h.loads(h.send(Select(C), at=3))] == [C]
    h.send(Select(A), at=4)  # L30: waits for C's load; C is no longer wanted
    out = h.send(OwnStray(C, "C-j"), at=5)  # C's load is in flight
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("C-j", "stray")]
    assert h.core.residents == {A: A, B: B} and h.core.model == C  # C-j is not kept


def test_L22_a_busy_stray_is_kept_until_idle_then_unloaded_not_kept_as_a_resident() -> None:
    h = restarted(max_loaded=3)
    h.send(ServerActivity("A-j", busy=True, doing="generating"), at=0.05)
    out = h.send(OwnStray(A, "A-j"), at=0.1)
    assert h.unloads(out) == [] and h.core.residents == {}
    assert h.core.deferred_unloads == ((A, "A-j", "stray"),)
    out = h.send(ServerActivity("A-j", busy=False), at=3)
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [("A-j", "stray")]


# --- L28: pinned keys changed by a config reload ---------------------------------------


def reload(h: Harness, at: float, **changes: object) -> list:  # type: ignore[type-arg]
    return h.send(SettingsChanged(replace(h.core.settings, **changes)), at=at)


def started(**settings: object) -> Harness:
    h = Harness(switch_debounce=0, **settings)
    h.send(ServerSnapshot({}, after_outage=True), at=0)  # the first look at start
    return h


def test_L28_a_reload_that_pins_a_model_loads_it_at_once() -> None:
    h = started()
    h.loaded(B, at=1)
    out = reload(h, 2, pinned=(A,))
    (pin,) = h.loads(out)
    assert pin.model == A and h.unloads(out) == []
    assert h.events("pinned_loaded", h.load_ok(pin)) == [{"model": A}]
    assert h.core.model == B and h.core.residents == {A: A}
    assert h.unloads(h.tick(10_000)) and h.core.residents == {A: A}  # B idled out, A stays


def test_L28_pins_added_by_a_reload_load_one_at_a_time_after_a_waiting_selection() -> None:
    h = started(pinned=())
    h.send(SettingsChanged(replace(h.core.settings, switch_debounce=0.5)), at=0)
    h.send(Select(C), at=1)  # in its debounce
    assert h.loads(reload(h, 1.1, pinned=(A, B))) == []  # the selection goes first
    (load_c,) = h.loads(h.tick(1.5))
    assert load_c.model == C
    (pin_a,) = h.loads(h.load_ok(load_c))
    assert pin_a.model == A
    (pin_b,) = h.loads(h.load_ok(pin_a))  # L30: one at a time
    assert pin_b.model == B
    h.load_ok(pin_b)
    assert h.core.model == C and h.core.residents == {A: A, B: B}


def test_L28_a_pinned_model_ejected_by_hand_comes_back_only_when_a_reload_adds_it() -> None:
    h = started(pinned=(A,))
    (pin,) = h.loads()
    h.load_ok(pin)
    h.send(ServerSnapshot({}), at=5)  # ejected by hand (L18)
    assert h.loads(reload(h, 6, idle_timeout=60)) == []  # still pinned: still followed
    assert h.loads(reload(h, 7, pinned=())) == []
    assert [a.model for a in h.loads(reload(h, 8, pinned=(A,)))] == [A]  # newly added


def test_L28_a_reload_that_unpins_a_model_makes_it_an_ordinary_resident() -> None:
    h = started(pinned=(A,), idle_timeout=100, max_loaded=2)
    (pin,) = h.loads()
    h.load_ok(pin)
    h.loaded(B, at=1)
    out = reload(h, 50, pinned=())
    assert h.unloads(out) == [] and h.core.residents == {A: A}
    (view_a,) = [v for v in h.core.residents_view() if v.model == A]
    assert not view_a.pinned and view_a.idle_deadline == pytest.approx(100)  # from last use
    assert [(u.model, u.reason) for u in h.unloads(h.tick(100))] == [(A, "idle")]


def test_L28_an_unpinned_resident_past_max_loaded_is_evicted_at_once() -> None:
    h = started(pinned=(A,), idle_timeout=100)
    (pin,) = h.loads()
    h.load_ok(pin)
    h.loaded(B, at=1)  # pinned A does not count: B fills max_loaded 1
    out = reload(h, 2, pinned=())
    assert [(u.model, u.reason) for u in h.unloads(out)] == [(A, "switch")]
    assert h.events("evicted", out) == [
        {"model": A, "instance_id": A, "reason": "max_loaded", "for": B}
    ]
    assert h.core.model == B and h.core.residents == {}


# --- never two instances when an unload command meets a load of the same model --------


def test_L22_an_unload_command_found_busy_after_its_model_was_selected_again_is_a_stray() -> None:
    h = Harness(switch_debounce=0, max_loaded=2)
    h.loaded(A, at=0)
    h.loaded(B, at=1)  # A stays beside B
    (unload,) = h.unloads(h.send(UnloadCommand(1, A), at=2))
    (load,) = h.loads(h.send(Select(A), at=3))  # the unload may still fail: load anew
    h.send(UnloadDeferred(unload.op, "generating", 1), at=4)
    assert h.core.deferred_unloads == ((A, A, "stray"),)  # tracked, not forgotten
    h.send(ServerActivity(A, busy=False), at=5)
    out = h.load_ok(load, "A-2")
    assert [(u.instance_id, u.reason) for u in h.unloads(out)] == [(A, "stray")]
    assert h.core.instance_id == "A-2"


def test_L28_a_pinned_model_being_unloaded_by_hand_is_not_loaded_again_meanwhile() -> None:
    h = Harness(switch_debounce=0, max_loaded=2, pinned=(C,))
    h.loaded(C, at=0)  # selected first, then pinned at the first look
    (load_a,) = h.loads(h.send(Select(A), at=1))
    h.send(ServerSnapshot({C: (C,)}, after_outage=True), at=1)  # C due behind A's load
    (unload,) = h.unloads(h.send(UnloadCommand(1, C), at=2))
    assert h.loads(h.load_ok(load_a)) == []  # followed like an eject by hand (L18)
    h.send(UnloadDeferred(unload.op, "generating", 1), at=3)  # busy: it stays
    assert h.core.residents == {C: C}
    assert [v.model for v in h.core.residents_view()].count(C) == 1
