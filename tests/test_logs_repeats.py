"""logs.RepeatLimit: the first of repeated warnings, then one count per minute; explicit
clock values, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from lmkeeperd.logs import RepeatLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limit(clock: Clock) -> tuple[RepeatLimit, list[tuple[Any, ...]]]:
    summaries: list[tuple[Any, ...]] = []
    limit = RepeatLimit(window=60.0, per_event=5, clock=clock, emit=lambda *a: summaries.append(a))
    return limit, summaries


def _passes(limit: RepeatLimit, level: str, event: str, **fields: Any) -> bool:
    try:
        limit(None, level, {"event": event, "level": level, **fields})
    except structlog.DropEvent:
        return False
    return True


def test_identical_warnings_are_written_once_then_counted_per_minute() -> None:
    clock = Clock()
    limit, summaries = _limit(clock)
    written = [_passes(limit, "warning", "selection_unknown", model="x") for _ in range(1000)]
    assert written.count(True) == 1 and written[0]
    assert summaries == []  # no loop here: the count waits for the minute's end
    clock.now += 60.0
    assert _passes(limit, "warning", "selection_unknown", model="x")  # a new minute
    assert summaries == [("warning", "selection_unknown", {"model": "x"}, 999, 60.0)]
    limit.flush("selection_unknown", clock.now)  # nothing left out in this minute
    assert len(summaries) == 1


def test_different_warnings_of_one_event_are_capped_per_minute() -> None:
    clock = Clock()
    limit, summaries = _limit(clock)
    written = [_passes(limit, "warning", "selection_unknown", model=f"k{i}") for i in range(50)]
    assert written.count(True) == 5 and all(written[:5])
    assert _passes(limit, "warning", "other_event", model="k1")  # its own count
    limit.flush("selection_unknown", clock.now)
    assert summaries == [("warning", "selection_unknown", {"model": "k49"}, 45, 60.0)]


@pytest.mark.parametrize(
    ("level", "fields"),
    [("info", {}), ("debug", {}), ("warning", {"count": 3}), ("error", {"repeated": 2})],
)
def test_info_lines_and_self_counted_bursts_pass_untouched(
    level: str, fields: dict[str, Any]
) -> None:
    limit, _ = _limit(Clock())
    assert all(_passes(limit, level, "accept_failed", **fields) for _ in range(20))
