"""The driver: the one place that feeds the lifecycle core and performs its actions.

    config file ──watcher/SIGHUP──┐
    control socket ──requests─────┤            ┌─▶ LM Studio client (load, unload)
    proxy ──requests, switches────┤            │   (server_sync.py)
    server reconcile ──snapshots──┼─▶ feed() ─▶│─▶ control socket subscribers, log
    load/unload outcomes ─────────┘  core      └─▶ sd_notify, command replies

Everything runs on one asyncio loop. `feed(event)` hands an event to the pure
core and performs the actions it returns at once; loads and unloads run as
tasks that feed their outcome back. Then the proxy's switch gate says what it
wants done (a selection, streams for requests it lets go), and the driver
feeds that too, in order: `feed` is never re-entered. The driver loop sleeps
until the core's next deadline (debounce, idle timer) or until something
feeds it: an idle daemon is asleep, except for the deliberate server reconcile
every `[server] reconcile_interval`.

The roles it wires (each sees the driver as a `Host`, context.py):
control_handler.py (the control socket), proxy_bridge.py (the proxy and
metrics), server_sync.py (LM Studio), status.py (the status snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import structlog

from lmkeeperd import __version__, logs, paths
from lmkeeperd.config import Config
from lmkeeperd.control.server import ControlServer
from lmkeeperd.control.socket_record import Recorder
from lmkeeperd.core import (
    Action,
    CancelLoad,
    CommandDone,
    CoreView,
    Event,
    Lifecycle,
    LifecycleError,
    Notify,
    ResumeLoad,
    Select,
    SettingsChanged,
    Shutdown,
    StartLoad,
    StartUnload,
    StreamStarted,
    Tick,
)
from lmkeeperd.daemon import left_behind, selection
from lmkeeperd.daemon.activity_bridge import ActivityBridge
from lmkeeperd.daemon.config_file import ConfigReader
from lmkeeperd.daemon.control_handler import ControlHandler
from lmkeeperd.daemon.journal import Journal
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.sdnotify import Notifier
from lmkeeperd.daemon.selection_check import SelectionChecker
from lmkeeperd.daemon.server_sync import ServerSync
from lmkeeperd.daemon.status import build_status
from lmkeeperd.daemon.watcher import watch_file
from lmkeeperd.daemon.why import ConfigProblem
from lmkeeperd.daemon.wiring import settings_from
from lmkeeperd.errors import DaemonError
from lmkeeperd.listening import install_accept_guard
from lmkeeperd.proxy import OpenStreams, SelectModel
from lmkeeperd.status import RestoredSelection, Status

log = structlog.get_logger()

_WARNING_EVENTS = frozenset(
    {
        "load_failed",
        "unload_failed",
        "config_invalid",
        "server_unreachable",
        "memory_advisory",
        "selection_unknown",
        "activity_blind",  # L21: generations we cannot see may be cut by idle eject
        "switch_forced",  # L20: a generation only LM Studio saw was cut by a switch
    }
)
_STREAM_FLIP = frozenset({"loaded", "streaming"})
# Traces for someone asking "why did it pick that?", not news (issue 13).
_DEBUG_EVENTS = frozenset({"selection_superseded"})

SHUTDOWN_RESERVE_S = 0.3
"""Of the stop bound, kept back from the unload for the cleanup and the process's exit."""


class Daemon:
    """Runs lmkeeperd until stopped. `run()` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        hangup_stops: bool = False,
    ) -> None:
        # SIGHUP reloads a service's config; a program in a terminal (the demo) stops on
        # it instead, as the terminal that ran it has closed.
        self._hangup_stops = hangup_stops
        self._config = config
        self.config_path = config_path
        self._clock = clock
        self._notifier = notifier or Notifier.from_env()
        self._core = Lifecycle(settings_from(config))
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stream_ids = itertools.count(1)
        self._feeding = False
        self._started = clock()
        self._sigint_count = 0
        self._control: ControlServer | None = None
        # State belongs to the daemon of this config file (paths.state_key).
        self._state_file = paths.selection_file(config_path)
        self.journal = Journal(paths.journal_file(config_path))
        self.restored: RestoredSelection | None = None
        self.config_problem = ConfigProblem()  # `config_error` in status until fixed
        self._reader = ConfigReader(
            config_path,
            self.announce,
            lambda: self.reload("file"),
            on_invalid=lambda e: self.config_problem.failed(str(config_path), e),
        )
        self._stop_at: float | None = None
        self.sync = ServerSync(self, config, self.journal)
        self.bridge = ProxyBridge(self, self.sync)
        self.activity = ActivityBridge(self, config, clock=clock)
        self.sync.look = self.activity.look  # L20: look before unloading
        self.sync.watched = lambda: self.activity.watching
        self.activity.on_server_change = self.sync.recheck_now
        self.checker = SelectionChecker(self, self.sync, state_file=self._state_file)
        self.handler = ControlHandler(
            self, self.sync, state_file=self._state_file, status=self.status, checker=self.checker
        )

    # --- Host (context.py) ----------------------------------------------------

    @property
    def core(self) -> CoreView:
        return self._core

    @property
    def config(self) -> Config:
        return self._config

    def next_stream(self) -> int:
        return next(self._stream_ids)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.track(task)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the core -------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand `event` to the core and perform what it asks, right now; then the gate's work.

        Nothing performed here feeds back synchronously: loads and unloads are
        tasks, and the switch gate returns its work instead of calling back.
        """
        if self._feeding:  # a bug of ours: events would be handled out of order
            log.error("lifecycle_error", error=f"feed({type(event).__name__}) re-entered")
            return
        self._feeding = True
        try:
            self._handle(event)
            self._gate_work()
        finally:
            self._feeding = False
        self._wake.set()

    def settle(self) -> None:
        """The gate moved outside any event (a request came or left): do its work now."""
        if self._feeding:
            return  # the running feed asks the gate when its own actions are done
        self._feeding = True
        try:
            self._gate_work()
        finally:
            self._feeding = False
        self._wake.set()

    def _handle(self, event: Event) -> None:
        try:
            actions = self._core.handle(event, self._clock())
        except LifecycleError as e:  # a bug of ours: say so, keep running
            log.error("lifecycle_error", error=str(e))
            return
        for action in actions:
            self._perform(action)
        self.sync.sync_pressure_watch()
        self.activity.sync_managed()

    def _gate_work(self) -> None:
        """What the proxy's switch gate wants after the event: events of their own, in order."""
        while work := self.bridge.gate_work():
            for item in work:
                match item:
                    case SelectModel(model=model):
                        # Not saved as the selection to restore at start: a request is a
                        # passing use; the control socket and the config say what to keep.
                        selection.received(model, "proxy")
                        self._handle(Select(model))
                    case OpenStreams(waiters=waiters):
                        for waiter in waiters:
                            if waiter.done():
                                continue  # its request gave up
                            stream = self.next_stream()
                            log.debug("stream_opened", stream=stream, conn="proxy")
                            self._handle(StreamStarted(stream))
                            waiter.set_result(stream)

    def _perform(self, action: Action) -> None:
        match action:
            case StartLoad():
                self.sync.start_load(action)
            case StartUnload():
                # With `stream_opened`, this orders decisions against streams in the log:
                # the soak test (tests/daemon/test_e2e_soak.py) reads both.
                log.debug(
                    "unload_started",
                    op=action.op,
                    model=action.model,
                    instance_id=action.instance_id,
                    reason=action.reason,
                )
                self.sync.start_unload(action)
            case CancelLoad(op=op):
                # The request keeps running in the background so that, should the
                # server finish the load anyway, its outcome reaches the core (L5).
                log.debug("load_superseded", op=op)
            case ResumeLoad(op=op):
                log.debug("load_resumed", op=op)  # its request never stopped: nothing to do
            case Notify(event=name, fields=fields):
                self.announce(name, fields)
            case CommandDone(request=request, error=error):
                self.handler.command_done(request, error)

    def announce(self, name: str, fields: Mapping[str, Any]) -> None:
        level = "warning" if name in _WARNING_EVENTS else "info"
        if name in _DEBUG_EVENTS:
            level = "debug"
        if name == "state_changed" and {fields.get("from"), fields.get("to")} == _STREAM_FLIP:
            level = "debug"  # every proxied request flips these two: noise at info level
        getattr(log, level)(name, **fields)
        self.bridge.observe(name, fields)
        self.sync.observe(name, fields)
        if self._control is not None:
            self._control.publish({"event": name, **fields, "time": logs.utc_now()})
        if name == "state_changed":
            self._notifier.status(self._status_line())

    def _status_line(self) -> str:
        model = self._core.model
        return f"{self._core.state.value}" + (f": {model}" if model else "")

    def status(self) -> Status:
        return build_status(
            core=self._core,
            now=self._clock(),
            started=self._started,
            config_path=self.config_path,
            config_error=self.config_problem.current,
            reconcile_interval=self.sync.reconcile_interval_now(),
            sync=self.sync,
            bridge=self.bridge,
            control=self._control,
            restored=self.restored,
            activity=self.activity,
        )

    # --- config ---------------------------------------------------------------

    async def _watch_config(self) -> None:
        watcher = watch_file(self.config_path)
        try:
            while True:
                await watcher.wait_changed()
                self.reload(source="file")
        finally:
            watcher.close()

    def reload(self, source: str) -> None:
        """Re-read the config; an invalid, empty or vanished one keeps the last good running."""
        self._notifier.reloading()
        new = self._reader.read()  # None: the reader said why the file is not applied
        if new is None:
            self._notifier.ready(self._status_line())
            return
        was = self.config_problem.fixed()
        if was is not None:
            self.announce("config_fixed", {"path": str(self.config_path), "was": was["message"]})
        old, self._config = self._config, new
        if new == old and source == "file":
            self._notifier.ready(self._status_line())
            return  # touched, not changed
        if new.log != old.log:
            logs.setup(new.log.level, new.log.format)
        self.sync.configure(old, new)
        self.activity.configure(old, new)
        if new.control != old.control:
            log.warning("config_needs_restart", key="control.socket")
        for key, before, after in (
            ("proxy.listen", old.proxy.listen, new.proxy.listen),
            ("metrics.listen", old.metrics.listen, new.metrics.listen),
        ):
            if before != after:
                log.warning("config_needs_restart", key=key)
        self.bridge.configure(old, new)
        self.feed(SettingsChanged(settings_from(new)))
        self.announce("config_reloaded", {"path": str(self.config_path), "source": source})
        if new.model.selected != old.model.selected and new.model.selected.strip():
            # A changed `selected` is a selection, and the newest one: it replaces what an
            # older socket selection stored, or a restart would bring that one back. Checked
            # against the catalog first (L23): an unknown key changes nothing.
            key = new.model.selected.strip()
            selection.received(key, "config", path=str(self.config_path))
            stored = selection.StoredSelection(key, new.model.selected)
            self.spawn(self.checker.select_quietly(key, source="config", store=stored))
        self._notifier.ready(self._status_line())

    # --- life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        install_accept_guard(loop)  # out of descriptors: one log line per burst, no tracebacks
        self._control = ControlServer(
            paths.socket_path(self.config),
            self.handler,
            record=Recorder.for_config(self.config_path),  # the CLI's way here (cli/locate.py)
        )
        try:
            await self._control.start()
            await self.bridge.start_listeners()
        except DaemonError as e:
            log.error("daemon_start_failed", error=str(e))
            await self.bridge.close_listeners()
            await self._control.close()
            await self.sync.aclose()
            return 1
        self._install_signals(loop)
        log.info(
            "daemon_started",
            version=__version__,
            pid=os.getpid(),
            config=str(self.config_path),
            socket=str(self._control.path),
            server=self.sync.base_url,
        )
        self.journal.open()  # before the first load: what an earlier daemon left in flight
        initial, self.restored = selection.restore(
            self.config_path, self._state_file, self.config.model.selected
        )
        if initial.strip():
            restored = initial != self.config.model.selected
            where = self._state_file if restored else self.config_path
            source = "restored" if restored else "config"
            selection.received(initial, source, path=str(where))
            self.spawn(self._start_with(initial, source))
        else:
            self.sync.collecting = True
        self.spawn(self.sync.reconcile_loop())
        self.activity.start()
        self.spawn(self._watch_config())
        interval = self._notifier.watchdog_interval()
        if interval is not None:
            self.spawn(self._watchdog(interval))
        self._notifier.ready(self._status_line())
        try:
            await self._drive()
        finally:
            await self.shutdown()
        return 0

    async def _start_with(self, model: str, source: str) -> None:
        """The selection to start with, checked (L23); only then are strays collected (L22)."""
        try:
            await self.checker.select_quietly(model, source=source, store=None)
        finally:
            self.sync.collecting = True

    async def _drive(self) -> None:
        """Sleep until the next deadline or until something was fed; tick when one is due."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            deadline = self._core.next_deadline()
            self._wake.clear()
            # A timer handle rather than wait_for(), which makes a task per wake-up: every
            # request on the socket wakes this loop (bench/bench_roundtrip.py).
            timer = None
            if deadline is not None:
                timer = loop.call_later(max(0.0, deadline - self._clock()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
            due = self._core.next_deadline()
            # Every event fires what fell due before it; a Tick is needed only when none came.
            if not self._stop.is_set() and due is not None and due <= self._clock():
                self.feed(Tick())

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
        self._reader.close()
        self.bridge.stop_accepting()  # requests under way finish while we unload
        while self._shutdown_waits_on_server() and self._clock() < unload_by:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, unload_by - self._clock()))
        # What the stop leaves on the server, by model, and how to unload it now (L22).
        left_behind.report(
            self.journal.entries(), timeout_s=bound, timed_out=self._shutdown_waits_on_server()
        )

        def left() -> float:
            return max(0.01, deadline - self._clock())

        # Before the sweep below: its stream ends feed the core.
        await _within(left(), self.bridge.close_listeners())
        await _within(left(), self.activity.stop())
        for task in list(self._tasks):
            task.cancel()
        self.handler.fail_commands("lmkeeperd is shutting down")
        if self._tasks:
            # A task that ignores its cancellation (a thread under it) is left behind.
            await asyncio.wait(list(self._tasks), timeout=left())
        # What a clean stop leaves loaded (unload_on_exit off, in use) is the user's now;
        # loads and unloads it could not wait for stay journaled for the next start (L22).
        self.journal.drop_held()
        if self._control is not None:
            await _within(left(), self._control.close())
        await _within(left(), self.sync.aclose())
        log.info("daemon_stopped")

    def _shutdown_waits_on_server(self) -> bool:
        # A load cut short by the stop may still finish on the server (LM Studio does not
        # abandon a load whose client left); its outcome makes the core unload that instance,
        # so with unload_on_exit it is waited for too, within the same bound.
        if self._core.unloads_in_flight:
            return True
        return self._config.model.unload_on_exit and self.sync.requests_in_flight

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
        self._stop.set()
        self._wake.set()

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
