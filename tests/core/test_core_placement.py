"""The placement function (core/placement.py): what to load, what to evict (L24, L25)."""

from __future__ import annotations

import pytest

from lmkeeperd.core import Limits, Placement, Seat, place

ONE = Limits(max_loaded=1)


def test_L24_a_wanted_resident_loads_and_evicts_nothing() -> None:
    assert place(["a"], [Seat("a", 0, idle=True)], ONE) == Placement()


def test_nothing_resident_loads_the_wanted_model() -> None:
    assert place(["a"], [], ONE) == Placement(load=("a",))


def test_L25_one_resident_idle_is_evicted_for_the_new_model() -> None:
    assert place(["b"], [Seat("a", 5, idle=True)], ONE) == Placement(load=("b",), evict=("a",))


def test_L25_a_resident_in_use_blocks_and_nothing_is_evicted() -> None:
    assert place(["b"], [Seat("a", 5, idle=False)], ONE) == Placement(blocked=("b",))


def test_L25_forced_after_the_wait_loads_beside_the_busy_resident() -> None:
    plan = place(["b"], [Seat("a", 5, idle=False)], ONE, force=True)
    assert plan == Placement(load=("b",))


def test_L25_the_least_recently_used_idle_resident_goes_first() -> None:
    seats = [Seat("a", 30, idle=True), Seat("b", 10, idle=True), Seat("c", 20, idle=True)]
    plan = place(["d"], seats, Limits(max_loaded=3))
    assert plan == Placement(load=("d",), evict=("b",))


def test_L25_busy_pinned_and_wanted_residents_are_never_evicted() -> None:
    seats = [
        Seat("old-busy", 1, idle=False),
        Seat("pinned", 2, idle=True),
        Seat("also-wanted", 3, idle=True),
        Seat("idle", 9, idle=True),
    ]
    limits = Limits(max_loaded=3, pinned=frozenset({"pinned"}))  # pinned do not count
    plan = place(["also-wanted", "new"], seats, limits)
    assert plan == Placement(load=("new",), evict=("idle",))


def test_L28_pinned_models_do_not_count_against_max_loaded_but_count_in_the_budget() -> None:
    seats = [Seat("pin", 1, idle=True, estimate=10), Seat("a", 2, idle=True, estimate=4)]
    limits = Limits(max_loaded=2, pinned=frozenset({"pin"}))
    assert place(["b"], seats, limits) == Placement(load=("b",))
    limits = Limits(max_loaded=2, budget=16, pinned=frozenset({"pin"}))
    assert place(["b"], seats, limits, {"b": 4}) == Placement(load=("b",), evict=("a",))


def test_L25_the_budget_evicts_until_the_new_model_fits() -> None:
    seats = [Seat("a", 1, idle=True, estimate=6), Seat("b", 2, idle=True, estimate=6)]
    plan = place(["c"], seats, Limits(max_loaded=5, budget=16), {"c": 8})
    assert plan == Placement(load=("c",), evict=("a",))
    plan = place(["c"], seats, Limits(max_loaded=5, budget=24), {"c": 8})
    assert plan == Placement(load=("c",))


def test_L25_a_model_too_big_even_alone_is_loaded_anyway() -> None:
    seats = [Seat("a", 1, idle=True, estimate=4)]
    plan = place(["huge"], seats, Limits(max_loaded=3, budget=10), {"huge": 40})
    assert plan == Placement(load=("huge",), evict=("a",))


def test_L25_a_blocked_model_evicts_nothing_for_itself() -> None:
    seats = [Seat("idle", 1, idle=True), Seat("busy", 2, idle=False)]
    plan = place(["new"], seats, Limits(max_loaded=1))
    assert plan == Placement(blocked=("new",))


def test_several_wanted_models_are_placed_in_order_and_counted_together() -> None:
    seats = [Seat("a", 1, idle=True), Seat("b", 2, idle=True)]
    plan = place(["c", "d", "c"], seats, Limits(max_loaded=2))
    assert plan == Placement(load=("c", "d"), evict=("a", "b"))


def test_max_loaded_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_loaded must be at least 1, got 0"):
        Limits(max_loaded=0)


def test_L30_an_abandoned_load_still_counts_in_the_budget() -> None:
    seats = [Seat("a", 1, idle=True, estimate=6)]
    landing = [Seat("late", 0, idle=False, estimate=6)]
    limits = Limits(max_loaded=3, budget=16)
    assert place(["c"], seats, limits, {"c": 6}) == Placement(load=("c",))
    plan = place(["c"], seats, limits, {"c": 6}, landing=landing)
    assert plan == Placement(load=("c",), evict=("a",))  # never the landing load itself
