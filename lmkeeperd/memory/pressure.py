"""Notice when available memory stays low, so the daemon can eject its model.

The daemon runs `PressureWatcher.wait_pressure(below, grace)` as a task only
while a model it loaded is loaded and not streaming, and cancels it otherwise;
when the call returns, available memory has stayed below `below` bytes for
`grace` seconds and the daemon ejects (`[memory] pressure_eject_below`,
`pressure_grace`).

How it waits:
- While memory is above the threshold, it sleeps on a wake source. On Linux
  with PSI (kernel 4.20+, /proc/pressure/memory), that is a PSI trigger: the
  kernel wakes us when tasks stall on memory for 150 ms within a 2 s window.
  The trigger is only a hint to re-read available memory; a slow safety re-check
  (every 5 s) covers memory that runs low without stalls. Elsewhere (macOS,
  kernels without PSI or without permission for triggers) it polls every second.
- Once below, it re-reads every second (or sooner, at the end of the grace
  period); any reading above the threshold restarts the grace period.

PSI details that shaped the code: a trigger is written as "some <stall µs>
<window µs>" with a trailing NUL (the kernel overwrites the last byte written);
unprivileged writers (no CAP_SYS_RESOURCE) need a window that is a multiple of
2 s; the trigger fd signals POLLPRI and is *always* readable, so it cannot go to
`loop.add_reader` directly. It is registered for EPOLLPRI in a private epoll
instance, and that epoll's fd, readable only when the trigger fired, is what
the event loop watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import structlog

from lmkeeperd.memory.probe import MemoryProbe
from lmkeeperd.memory.sizes import to_gb

log = structlog.get_logger()

PSI_MEMORY = Path("/proc/pressure/memory")
PSI_STALL_US = 150_000
PSI_WINDOW_US = 2_000_000

Sleep = Callable[[float], Awaitable[None]]


class WakeSource(Protocol):
    """Something to wait on between readings: `wait` returns after `max_seconds`,
    or earlier when the OS signals pressure."""

    # True when wait() can return early on an OS event; False when it only sleeps.
    event_driven: bool

    async def wait(self, max_seconds: float) -> None: ...

    def close(self) -> None: ...


class SleepWake:
    """No OS events: waiting is sleeping."""

    event_driven = False

    def __init__(self, sleep: Sleep = asyncio.sleep) -> None:
        self._sleep = sleep

    async def wait(self, max_seconds: float) -> None:
        await self._sleep(max_seconds)

    def close(self) -> None:
        pass


class PsiWake:
    """A Linux PSI memory trigger, watched through a private epoll instance."""

    event_driven = True

    def __init__(self, trigger_fd: int, epoll: select.epoll) -> None:
        self._fd = trigger_fd
        self._epoll = epoll

    @classmethod
    def open(
        cls,
        path: Path = PSI_MEMORY,
        *,
        stall_us: int = PSI_STALL_US,
        window_us: int = PSI_WINDOW_US,
    ) -> PsiWake:
        """Create the trigger; OSError when PSI or triggers are not available."""
        if not hasattr(select, "epoll"):
            raise OSError("PSI triggers need epoll (Linux)")
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, f"some {stall_us} {window_us}\0".encode())
            epoll = select.epoll()
            try:
                epoll.register(fd, select.EPOLLPRI)
            except OSError:
                epoll.close()
                raise
        except OSError:
            os.close(fd)
            raise
        return cls(fd, epoll)

    async def wait(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        loop.add_reader(self._epoll.fileno(), fired.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fired.wait(), max_seconds)
        finally:
            loop.remove_reader(self._epoll.fileno())
            # Consume the event so the next wait does not return at once.
            with contextlib.suppress(OSError):
                self._epoll.poll(0)

    def close(self) -> None:
        if self._fd >= 0:
            self._epoll.close()
            os.close(self._fd)
            self._fd = -1


def open_wake_source(sleep: Sleep = asyncio.sleep) -> WakeSource:
    """PSI where the OS offers it, else plain sleeping."""
    if sys.platform.startswith("linux"):
        try:
            return PsiWake.open()
        except OSError as exc:
            log.debug("memory_pressure_polling", reason=str(exc))
    return SleepWake(sleep)


class PressureWatcher:
    def __init__(
        self,
        probe: MemoryProbe,
        *,
        poll_interval: float = 1.0,
        recheck_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wake_factory: Callable[[], WakeSource] | None = None,
    ) -> None:
        self._probe = probe
        self._poll_interval = poll_interval
        self._recheck_interval = recheck_interval
        self._clock = clock
        self._sleep = sleep
        self._wake_factory = wake_factory or (lambda: open_wake_source(sleep))

    async def wait_pressure(self, below_bytes: int, grace: float) -> int:
        """Return once available memory has stayed below `below_bytes` for
        `grace` seconds; the result is the last available figure read."""
        wake = self._wake_factory()
        try:
            below_since: float | None = None
            while True:
                available = self._probe.read().effective_available_bytes
                now = self._clock()
                if available >= below_bytes:
                    below_since = None
                    idle = self._recheck_interval if wake.event_driven else self._poll_interval
                    await wake.wait(idle)
                    continue
                if below_since is None:
                    below_since = now
                    log.debug(
                        "memory_pressure_low",
                        available_gb=to_gb(available),
                        threshold_gb=to_gb(below_bytes),
                    )
                remaining = grace - (now - below_since)
                if remaining <= 0:
                    return available
                await self._sleep(min(self._poll_interval, remaining))
        finally:
            wake.close()
