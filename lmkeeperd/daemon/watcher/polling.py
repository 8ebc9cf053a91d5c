"""The fallback watcher: the file's stat signature, compared every half second."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lmkeeperd.daemon.watcher.common import COALESCE_S, POLL_INTERVAL_S, resolve, signature


class PollingWatcher:
    """The fallback: compares the file's stat signature every `interval` seconds."""

    def __init__(self, path: Path, *, interval: float = POLL_INTERVAL_S) -> None:
        self._path = Path(path)
        self._interval = interval
        self._last = signature(self._path)
        self._closed = False
        self._sleeper: asyncio.Future[None] | None = None

    async def wait_changed(self) -> None:
        while True:
            await self._sleep(self._interval)
            current = signature(self._path)
            if current != self._last:
                break
        # Let a burst finish, then remember the state it ended in.
        await self._sleep(COALESCE_S)
        self._last = signature(self._path)

    def close(self) -> None:
        self._closed = True
        if self._sleeper is not None:
            self._sleeper.cancel()

    async def _sleep(self, seconds: float) -> None:
        if self._closed:
            raise RuntimeError("the file watcher is closed")
        loop = asyncio.get_running_loop()
        self._sleeper = loop.create_future()
        handle = loop.call_later(seconds, resolve, self._sleeper)
        try:
            await self._sleeper
        finally:
            handle.cancel()
            self._sleeper = None
