"""The memory-pressure watcher, on virtual time: a fake clock moved by fake sleeps."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lmkeeperd.memory.pressure import PressureWatcher, PsiWake, SleepWake, open_wake_source
from lmkeeperd.memory.probe import MemorySnapshot

GB = 10**9
THRESHOLD = 2 * GB


class OutOfTime(Exception):
    """Virtual time ran past the test's horizon: the watcher did not return."""


class World:
    """A fake clock, a probe whose readings follow a timeline, and fake waits."""

    def __init__(self, available_at: Callable[[float], int], horizon: float = 1000.0) -> None:
        self.now = 0.0
        self.available_at = available_at
        self.horizon = horizon
        self.sleeps: list[float] = []
        self.wake_waits: list[float] = []
        self.wakes_closed = 0
        self.waiting = asyncio.Event()
        self.cgroup_limit: int | None = None
        self.cgroup_usage: int | None = None

    def read(self) -> MemorySnapshot:
        return MemorySnapshot(
            total_bytes=64 * GB,
            available_bytes=self.available_at(self.now),
            cgroup_limit_bytes=self.cgroup_limit,
            cgroup_usage_bytes=self.cgroup_usage,
        )

    def clock(self) -> float:
        return self.now

    def _advance(self, seconds: float) -> None:
        self.now += seconds
        if self.now > self.horizon:
            raise OutOfTime

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._advance(seconds)
        await asyncio.sleep(0)

    def wake(self, event_driven: bool) -> Callable[[], FakeWake]:
        return lambda: FakeWake(self, event_driven)

    def watcher(self, event_driven: bool = False) -> PressureWatcher:
        return PressureWatcher(
            self,
            clock=self.clock,
            sleep=self.sleep,
            wake_factory=self.wake(event_driven),
            poll_interval=1.0,
            recheck_interval=5.0,
        )


class FakeWake:
    def __init__(self, world: World, event_driven: bool) -> None:
        self.world = world
        self.event_driven = event_driven

    async def wait(self, max_seconds: float) -> None:
        self.world.wake_waits.append(max_seconds)
        self.world.waiting.set()
        self.world._advance(max_seconds)
        await asyncio.sleep(0)

    def close(self) -> None:
        self.world.wakes_closed += 1


def _low_from(start: float) -> Callable[[float], int]:
    return lambda t: 1 * GB if t >= start else 10 * GB


def test_returns_once_memory_stayed_low_for_the_grace_period() -> None:
    world = World(_low_from(3.0))
    available = asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=10.0))
    assert available == 1 * GB
    # first low reading at t=3; readings every second; done at t=13
    assert world.now == pytest.approx(13.0)
    assert world.wakes_closed == 1


def test_a_reading_above_the_threshold_restarts_the_grace_period() -> None:
    def timeline(t: float) -> int:
        return 10 * GB if t < 3 or 8 <= t < 9 else 1 * GB

    world = World(timeline)
    asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=10.0))
    assert world.now == pytest.approx(19.0)


def test_never_returns_while_memory_is_plentiful() -> None:
    world = World(lambda t: 10 * GB, horizon=600.0)
    with pytest.raises(OutOfTime):
        asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=10.0))
    assert world.wakes_closed == 1


def test_exactly_at_the_threshold_is_not_pressure() -> None:
    world = World(lambda t: THRESHOLD, horizon=100.0)
    with pytest.raises(OutOfTime):
        asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=1.0))


def test_event_source_waits_long_while_fine_and_polling_takes_over_when_low() -> None:
    world = World(_low_from(12.0))
    asyncio.run(world.watcher(event_driven=True).wait_pressure(THRESHOLD, grace=3.0))
    # above: the event source with the slow safety re-check (5 s); below: 1 s polls
    assert world.wake_waits == [5.0, 5.0, 5.0]
    assert world.sleeps == [1.0, 1.0, 1.0]
    assert world.now == pytest.approx(18.0)


def test_polling_source_rechecks_every_poll_interval() -> None:
    world = World(_low_from(4.0))
    asyncio.run(world.watcher(event_driven=False).wait_pressure(THRESHOLD, grace=2.0))
    assert world.wake_waits == [1.0, 1.0, 1.0, 1.0]


def test_the_last_sleep_ends_exactly_at_the_grace_deadline() -> None:
    world = World(_low_from(0.0))
    asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=2.5))
    assert world.sleeps == [1.0, 1.0, 0.5]


def test_zero_grace_returns_at_the_first_low_reading() -> None:
    world = World(_low_from(0.0))
    asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=0.0))
    assert world.now == 0.0 and world.sleeps == []


def test_a_container_limit_makes_pressure_even_when_the_host_has_plenty() -> None:
    world = World(lambda t: 50 * GB)
    world.cgroup_limit, world.cgroup_usage = 8 * GB, 7 * GB
    assert asyncio.run(world.watcher().wait_pressure(THRESHOLD, grace=2.0)) == 1 * GB


def test_cancelling_the_watch_closes_the_wake_source() -> None:
    world = World(lambda t: 10 * GB)

    async def main() -> None:
        task = asyncio.create_task(world.watcher().wait_pressure(THRESHOLD, grace=5.0))
        await world.waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert world.wakes_closed == 1


def test_sleep_wake_sleeps_for_the_whole_wait() -> None:
    world = World(lambda t: 0)
    wake = SleepWake(world.sleep)
    asyncio.run(wake.wait(3.0))
    wake.close()
    assert world.sleeps == [3.0] and not wake.event_driven


def test_psi_wake_refuses_what_is_not_a_psi_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PsiWake.open(tmp_path / "absent")
    regular = tmp_path / "memory"
    regular.write_text("")
    with pytest.raises(OSError):
        PsiWake.open(regular)


def _psi_wake_or_skip() -> PsiWake:
    if not sys.platform.startswith("linux"):
        pytest.skip("PSI is Linux only")
    try:
        return PsiWake.open()
    except OSError as exc:
        pytest.skip(f"no PSI memory trigger here: {exc}")


def test_psi_trigger_on_this_machine_waits_at_most_the_given_time() -> None:
    wake = _psi_wake_or_skip()
    try:
        assert wake.event_driven
        # No memory stall is expected in the test run, so this returns on its timeout;
        # a stall would return it earlier, which is fine too. Never later than the
        # given time (the margin covers a loaded machine, not a wait twice as long).
        for _ in range(2):
            started = time.monotonic()
            asyncio.run(wake.wait(0.5))
            elapsed = time.monotonic() - started
            assert elapsed < 0.5 + 0.3, f"waited {elapsed:.2f} s for at most 0.5 s"
    finally:
        wake.close()
    wake.close()  # idempotent


def test_default_wake_source_is_psi_exactly_when_a_trigger_can_be_made() -> None:
    try:
        PsiWake.open().close()
        psi_works = sys.platform.startswith("linux")
    except OSError:
        psi_works = False
    wake = open_wake_source()
    try:
        assert isinstance(wake, PsiWake) == psi_works
        assert isinstance(wake, SleepWake) == (not psi_works)
    finally:
        wake.close()
