"""The shared part of the kernel-notification watchers (inotify, kqueue)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from lmkeeperd.daemon.watcher.common import COALESCE_S, resolve
from lmkeeperd.daemon.watcher.polling import PollingWatcher

log = structlog.get_logger()


class FdWatcher:
    """Shared part of the kernel-notification watchers: wait on an fd, coalesce, degrade.

    Subclasses provide `_fd`, `_arm()` (set up watches, may raise OSError), `_consume()`
    (read every queued event without blocking; True when the file may have changed) and
    `_release()` (close their fds).
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._pending = False
        self._closed = False
        self._waiting = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fallback: PollingWatcher | None = None

    @property
    def _fd(self) -> int:
        raise NotImplementedError

    def _arm(self) -> None:
        raise NotImplementedError

    def _consume(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    async def wait_changed(self) -> None:
        if self._closed:
            raise RuntimeError("the file watcher is closed")
        if self._waiting:
            raise RuntimeError("another task is already waiting on this file watcher")
        self._waiting = True
        try:
            await self._wait_changed()
        finally:
            self._waiting = False

    async def _wait_changed(self) -> None:
        if self._fallback is not None:
            await self._fallback.wait_changed()
            return
        loop = asyncio.get_running_loop()
        # `_pending` survives cancellation: a change seen by a cancelled call is not lost.
        while not self._pending:
            await self._readable(loop)
            self._pending = self._consume()
        deadline = loop.time() + COALESCE_S
        while self._fallback is None and (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._readable(loop), remaining)
            except TimeoutError:
                break
            self._consume()
        self._pending = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._waiter.cancel()
        if self._fallback is not None:
            self._fallback.close()
        self._release()

    def _rearm(self) -> None:
        """Re-arm after the watched folders changed; on failure, fall back to polling."""
        try:
            self._arm()
        except OSError as e:
            log.warning("config_watch_fallback", path=str(self._path), error=str(e))
            self._fallback = PollingWatcher(self._path)

    async def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._fd, resolve, waiter)
        self._waiter, self._loop = waiter, loop
        try:
            await waiter
        finally:
            self._waiter = None
            if not self._closed:
                loop.remove_reader(self._fd)
