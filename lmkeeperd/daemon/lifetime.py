"""The daemon's life: start, signals, the selection to start with, a bounded stop (L16).

As uvicorn's `Server.serve()`: startup, the main loop (the driver's `drive`)
and shutdown in one place; SIGTERM/SIGINT ask for a stop, a second SIGINT
exits at once, SIGHUP reloads the config (stops the demo, whose terminal is
gone), and the stop is bounded by `shutdown_timeout`. The parts are built by
assembly.py and handed in whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

import lmkeeperd.daemon.left_behind as left_behind
import lmkeeperd.daemon.selection as selection
from lmkeeperd import __version__
from lmkeeperd.config import Config
from lmkeeperd.core import CoreView, Event, Shutdown
from lmkeeperd.daemon.activity_bridge import ActivityBridge
from lmkeeperd.daemon.control_handler import ControlHandler
from lmkeeperd.daemon.driver import Driver
from lmkeeperd.daemon.journal import Journal
from lmkeeperd.daemon.operations import Operations
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.reload import Reloader
from lmkeeperd.daemon.sdnotify import Notifier
from lmkeeperd.daemon.selection_check import SelectionChecker
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.daemon.status_snapshot import StatusReporter
from lmkeeperd.daemon.watcher import watch_file
from lmkeeperd.errors import DaemonError
from lmkeeperd.listening import install_accept_guard
from lmkeeperd.status_types import RestoredSelection, Status

log = structlog.get_logger()

SHUTDOWN_RESERVE_S = 0.3
"""Of the stop bound, kept back from the unload for the cleanup and the process's exit."""


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything assembly.py built, for the daemon's life."""

    driver: Driver
    view: ServerView
    ops: Operations
    activity: ActivityBridge
    bridge: ProxyBridge
    handler: ControlHandler
    checker: SelectionChecker
    reporter: StatusReporter
    reloader: Reloader
    journal: Journal
    notifier: Notifier
    clock: Callable[[], float]
    state_file: Path


class Daemon:
    """Runs lmkeeperd until stopped. `run()` returns the process exit code."""

    def __init__(self, parts: Parts, config_path: Path, *, hangup_stops: bool = False) -> None:
        # SIGHUP reloads a service's config; a program in a terminal (the demo) stops on
        # it instead, as the terminal that ran it has closed.
        self._hangup_stops = hangup_stops
        self.config_path = config_path
        self.parts = parts
        self.driver = parts.driver
        self.view = parts.view
        self.ops = parts.ops
        self.activity = parts.activity
        self.bridge = parts.bridge
        self.handler = parts.handler
        self.checker = parts.checker
        self.journal = parts.journal
        self._clock = parts.clock
        self._notifier = parts.notifier
        self._control = parts.driver.roles.control
        self.restored: RestoredSelection | None = None
        self._stop_at: float | None = None
        self._sigint_count = 0
        self._control_started = False  # never started (in process): nothing to close

    # --- what tests and the entry point use of the driver ------------------------

    @property
    def core(self) -> CoreView:
        return self.driver.core

    @property
    def config(self) -> Config:
        return self.driver.config

    def feed(self, event: Event) -> None:
        self.driver.feed(event)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self.driver.spawn(coro)

    def reload(self, source: str) -> None:
        self.parts.reloader.reload(source)

    @property
    def state_file(self) -> Path:
        """Where the last selection is kept for the next start."""
        return self.parts.state_file

    def status(self) -> Status:
        """What the daemon knows now, without asking LM Studio (`status` asks live)."""
        return self.parts.reporter.snapshot()

    # --- life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        install_accept_guard(loop)  # out of descriptors: one log line per burst, no tracebacks
        self._control_started = True
        try:
            await self._control.start()
            await self.bridge.start_listeners()
        except DaemonError as e:
            log.error("daemon_start_failed", error=str(e))
            await self.bridge.close_listeners()
            await self._control.close()
            await self.view.aclose()
            return 1
        self._install_signals(loop)
        log.info(
            "daemon_started",
            version=__version__,
            pid=os.getpid(),
            config=str(self.config_path),
            socket=str(self._control.path),
            server=self.view.base_url,
        )
        self.journal.open()  # before the first load: what an earlier daemon left in flight
        state_file = self.parts.state_file
        initial, self.restored = selection.restore(
            self.config_path, state_file, self.config.model.selected
        )
        self.parts.reporter.restored_from(self.restored)
        if initial.strip():
            restored = initial != self.config.model.selected
            where = state_file if restored else self.config_path
            source = "restored" if restored else "config"
            selection.received(initial, source, path=str(where))
            self.spawn(self._start_with(initial, source))
        else:
            self.view.collecting = True
        self.spawn(self.view.reconcile_loop())
        self.activity.start()
        self.spawn(self._watch_config())
        interval = self._notifier.watchdog_interval()
        if interval is not None:
            self.spawn(self._watchdog(interval))
        self._notifier.ready(self.driver.status_line())
        try:
            await self.driver.drive()
        finally:
            await self.shutdown()
        return 0

    async def _start_with(self, model: str, source: str) -> None:
        """The selection to start with, checked (L23); only then are strays collected (L22)."""
        try:
            await self.checker.select_quietly(model, source=source, store=None)
        finally:
            self.view.collecting = True
            # L22, L24, L25: what the journal says is ours is collected now (adopted as
            # residents or unloaded), from the listing the check just made, before the
            # selection's debounce can load beside it unseen; and looked at again soon,
            # not at the next reconcile, minutes away while the channel is open.
            self.view.collect_now()
            self.view.recheck_now()

    async def _watch_config(self) -> None:
        watcher = watch_file(self.config_path)
        try:
            while True:
                await watcher.wait_changed()
                self.reload(source="file")
        finally:
            watcher.close()

    async def shutdown(self) -> None:
        """L16: cancel pending work, unload within `shutdown_timeout`, always finish.

        The bound runs from the stop request (the signal), and covers the cleanup and the
        process's exit too: the unload gets the bound less SHUTDOWN_RESERVE_S, and each
        cleanup step only what is left (a hung server once took 2.14 s against 2 s).
        """
        bound = self.config.model.shutdown_timeout
        deadline = (self._stop_at if self._stop_at is not None else self._clock()) + bound
        unload_by = deadline - min(SHUTDOWN_RESERVE_S, bound / 4)
        self._notifier.stopping()
        log.info("daemon_stopping", timeout_s=bound)
        self.feed(Shutdown())
        self.parts.reloader.reader.close()
        self.bridge.stop_accepting()  # requests under way finish while we unload
        while self._shutdown_waits_on_server() and self._clock() < unload_by:
            await self.driver.changed(max(0.0, unload_by - self._clock()))
        # What the stop leaves on the server, by model, and how to unload it now (L22).
        left_behind.report(
            self.journal.entries(), timeout_s=bound, timed_out=self._shutdown_waits_on_server()
        )

        def left() -> float:
            return max(0.01, deadline - self._clock())

        # Before the sweep below: its stream ends feed the core.
        await _within(left(), self.bridge.close_listeners())
        await _within(left(), self.activity.stop())
        tasks = self.driver.tasks
        for task in tasks:
            task.cancel()
        self.handler.fail_commands("lmkeeperd is shutting down")
        if tasks:
            # A task that ignores its cancellation (a thread under it) is left behind.
            await asyncio.wait(tasks, timeout=left())
        # What a clean stop leaves loaded (unload_on_exit off, in use) is the user's now;
        # loads and unloads it could not wait for stay journaled for the next start (L22).
        self.journal.drop_held()
        if self._control_started:
            await _within(left(), self._control.close())
        await _within(left(), self.view.aclose())
        log.info("daemon_stopped")

    def _shutdown_waits_on_server(self) -> bool:
        # A load cut short by the stop may still finish on the server (LM Studio does not
        # abandon a load whose client left); its outcome makes the core unload that instance,
        # so with unload_on_exit it is waited for too, within the same bound.
        if self.core.unloads_in_flight:
            return True
        return self.config.model.unload_on_exit and self.ops.requests_in_flight

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a blocked loop stops the pings.
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        if self._hangup_stops:
            loop.add_signal_handler(signal.SIGHUP, self.request_stop)
        else:
            loop.add_signal_handler(signal.SIGHUP, lambda: self.reload(source="sighup"))

    def request_stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = self._clock()  # the stop bound counts from here
        self.driver.request_stop()

    def _on_sigint(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            os._exit(130)  # a second Ctrl-C means now
        self.request_stop()


async def _within(seconds: float, step: Coroutine[Any, Any, None]) -> None:
    """Run a cleanup step for at most `seconds`; one that overruns is abandoned (L16)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await step
