"""The driver: the one place that feeds the lifecycle core and performs its actions.

    control socket ──requests─────┐            ┌─▶ LM Studio (operations.py: load, unload)
    proxy ──requests, switches────┤            │
    server view ──snapshots───────┼─▶ feed() ─▶│─▶ control socket subscribers, log, metrics
    LM Studio's activity ─────────┤  core      │─▶ sd_notify, command replies
    load/unload outcomes ─────────┘            └─▶ the activity watcher, the pressure watch

Everything runs on one asyncio loop. `feed(event)` hands an event to the pure
core and performs the actions it returns at once; loads and unloads run as
tasks that feed their outcome back. Then the proxy's switch gate says what it
wants done (a selection, streams for requests it lets go), and the driver
feeds that too, in order: `feed` is never re-entered. `drive()` sleeps until
the core's next deadline (debounce, idle timer) or until something feeds it:
an idle daemon is asleep. Just before the idle deadline it asks LM Studio what
our instance is doing (L29) and feeds the answer, so that a busy instance or a
later `lastUsedTime` keeps the model.

The roles (each sees the driver as a `Host`, context.py) are built by
assembly.py and handed in through `build`; the daemon's life (start, signals,
stop) is lifetime.py's, config reloads reload.py's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

import lmkeeperd.daemon.selection as selection
from lmkeeperd import logs
from lmkeeperd.config import Config
from lmkeeperd.control.server import ControlServer
from lmkeeperd.core import (
    LMSTUDIO,
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
    StartLoad,
    StartUnload,
    StreamStarted,
    Tick,
)
from lmkeeperd.daemon.activity_bridge import ActivityBridge
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.control_handler import ControlHandler
from lmkeeperd.daemon.journal import Journal
from lmkeeperd.daemon.operations import Operations
from lmkeeperd.daemon.pressure import PressureWatch
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.sdnotify import Notifier
from lmkeeperd.daemon.wiring import settings_from
from lmkeeperd.proxy import OpenStreams, SelectModel

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
        "load_refused",  # L27: LM Studio's guardrails refused a load
        "thrashing",  # L24: switches keep alternating; max_loaded or the budget would help
    }
)
_STREAM_FLIP = frozenset({"loaded", "streaming"})
# Traces for someone asking "why did it pick that?", not news.
_DEBUG_EVENTS = frozenset({"selection_superseded"})

LOOK_LEAD_S = 0.25
"""How long before the idle deadline the driver asks LM Studio about our instance (L29)."""


@dataclass(frozen=True, slots=True)
class Roles:
    """What the driver hands the core's actions to (built by assembly.py)."""

    ops: Operations
    bridge: ProxyBridge
    activity: ActivityBridge
    pressure: PressureWatch
    handler: ControlHandler
    control: ControlServer
    journal: Journal


class Driver:
    """Feeds the core and performs its actions; the `Host` of every role."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float],
        notifier: Notifier,
        build: Callable[[Host], Roles],
    ) -> None:
        self._config = config
        self._clock = clock
        self._notifier = notifier
        # Nothing pinned until the catalog is read (residency_feed.py, L23).
        self._core = Lifecycle(settings_from(config, catalog=frozenset()))
        self._wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stream_ids = itertools.count(1)
        self._feeding = False
        self._looked_for: float | None = None  # the idle deadline LM Studio was asked about
        self.roles = build(self)

    # --- Host (context.py) ----------------------------------------------------

    @property
    def core(self) -> CoreView:
        return self._core

    @property
    def config(self) -> Config:
        return self._config

    def use_config(self, config: Config) -> None:
        """A reloaded config runs from now on (reload.py)."""
        self._config = config

    def next_stream(self) -> int:
        return next(self._stream_ids)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.track(task)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks)

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
        on_lmstudio = self._core.engine == LMSTUDIO
        try:
            actions = self._core.handle(event, self._clock())
        except LifecycleError as e:  # a bug of ours: say so, keep running
            log.error("lifecycle_error", error=str(e))
            return
        for action in actions:
            self._perform(action)
        if on_lmstudio and self._core.engine != LMSTUDIO:
            # Another engine takes what the core held (L13): what we journaled as ours
            # and still loaded is no longer ours to collect.
            self.roles.journal.drop_held()
        self.roles.pressure.sync()
        self.roles.activity.sync_managed()

    def _gate_work(self) -> None:
        """What the proxy's switch gate wants after the event: events of their own, in order."""
        while work := self.roles.bridge.gate_work():
            for item in work:
                match item:
                    case SelectModel(model=model):
                        # Not saved as the selection to restore at start: a request is a
                        # passing use; the control socket and the config say what to keep.
                        selection.received(model, "proxy")
                        self._handle(Select(model))
                    case OpenStreams(waiters=waiters, model=model):
                        for waiter in waiters:
                            if waiter.done():
                                continue  # its request gave up
                            stream = self.next_stream()
                            log.debug("stream_opened", stream=stream, conn="proxy", model=model)
                            self._handle(StreamStarted(stream, model))
                            waiter.set_result(stream)

    def _perform(self, action: Action) -> None:
        match action:
            case StartLoad():
                self.roles.ops.start_load(action)
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
                self.roles.ops.start_unload(action)
            case CancelLoad(op=op):
                # The request keeps running in the background so that, should the
                # server finish the load anyway, its outcome reaches the core (L5).
                log.debug("load_superseded", op=op)
            case ResumeLoad(op=op):
                log.debug("load_resumed", op=op)  # its request never stopped: nothing to do
            case Notify(event=name, fields=fields):
                self.announce(name, fields)
            case CommandDone(request=request, error=error):
                self.roles.handler.command_done(request, error)

    def announce(self, name: str, fields: Mapping[str, Any]) -> None:
        level = "warning" if name in _WARNING_EVENTS else "info"
        if name in _DEBUG_EVENTS:
            level = "debug"
        if name == "state_changed" and {fields.get("from"), fields.get("to")} == _STREAM_FLIP:
            level = "debug"  # every proxied request flips these two: noise at info level
        getattr(log, level)(name, **fields)
        self.roles.bridge.count(name, fields)
        self.roles.control.publish({"event": name, **fields, "time": logs.utc_now()})
        if name == "state_changed":
            self._notifier.status(self.status_line())

    def status_line(self) -> str:
        model = self._core.model
        return f"{self._core.state.value}" + (f": {model}" if model else "")

    # --- the loop ---------------------------------------------------------------

    async def drive(self) -> None:
        """Sleep until the next deadline or until something was fed; tick when one is due."""
        loop = asyncio.get_running_loop()
        while not self.stop_requested.is_set():
            deadline = self._core.next_deadline()
            look_at = self._look_at()
            if look_at is not None and (deadline is None or look_at < deadline):
                deadline = look_at
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
            look_at = self._look_at()
            if look_at is not None and look_at <= self._clock():
                self._looked_for = self._idle_at()
                await self.roles.activity.look_at_deadline()  # feeds what it learns
            due = self._core.next_deadline()
            # Every event fires what fell due before it; a Tick is needed only when none came.
            if not self.stop_requested.is_set() and due is not None and due <= self._clock():
                self.feed(Tick())

    def _idle_at(self) -> float | None:
        now = self._clock()
        idle = self._core.idle_eject_in(now)
        return None if idle is None else now + idle

    def _look_at(self) -> float | None:
        """When to ask LM Studio before the idle deadline (L29); None: no look is due."""
        idle_at = self._idle_at()
        if idle_at is None or not self.roles.activity.available:
            return None
        if self._looked_for is not None and abs(self._looked_for - idle_at) < 1e-3:
            return None  # asked for this deadline already: the tick decides (and looks, L20)
        return idle_at - LOOK_LEAD_S

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()

    async def changed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until something was fed or `timeout` passed (the stop's wait for its unload)."""
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
