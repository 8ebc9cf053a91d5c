"""The memory-pressure watch: runs only while a model of ours is loaded and the feature is on.

When available memory stays under `[memory] pressure_eject_below` for
`pressure_grace`, the core hears `MemoryPressure` and ejects our model unless
it is in use (the core decides; an eject looks first, L20).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from lmkeeperd.core import MemoryPressure, State
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.memory.sizes import to_gb

log = structlog.get_logger()


class PressureWatch:
    def __init__(self, host: Host, *, memory: Callable[[], MemoryCheck]) -> None:
        self._host = host
        self._memory = memory  # the memory check of the config running now
        self._task: asyncio.Task[None] | None = None

    def sync(self) -> None:
        """After every feed: watch memory only while it may lead to an eject."""
        below = self._host.config.memory.pressure_eject_below
        wanted = below is not None and self._host.core.state in (State.LOADED, State.STREAMING)
        task = self._task
        if wanted and (task is None or task.done()):
            self._task = self._host.spawn(self._watch())
        elif not wanted and task is not None:
            task.cancel()
            self._task = None

    async def _watch(self) -> None:
        from lmkeeperd.memory import PressureWatcher

        watcher = PressureWatcher(self._memory().probe)
        while (below := self._host.config.memory.pressure_eject_below) is not None:
            grace = self._host.config.memory.pressure_grace
            available = await watcher.wait_pressure(below, grace)
            log.warning("memory_pressure", available_gb=to_gb(available), threshold_gb=to_gb(below))
            self._host.feed(MemoryPressure())  # the core ejects only when no stream is open
