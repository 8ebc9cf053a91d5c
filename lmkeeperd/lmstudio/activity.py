"""`ActivityWatcher`: what LM Studio itself says our instances are doing, when asked (L29).

Theory of operation
-------------------
LM Studio offers no push for an instance's processing state, so lmkeeperd looks
only when a decision depends on the answer (L29, "look, don't poll"). The
watcher keeps one `/llm` channel open for the daemon's whole life; an open,
silent websocket costs nothing, and its closing is the sign that LM Studio went
away. While it is open the watcher sends nothing of its own accord, except

  * about once a second (`state_interval`), `getInstanceProcessingState` for
    each instance the daemon waits on (`set_waiting`: an instance the core holds
    busy, so a deferred eject or a queued switch learns when the use ends);

and it answers the daemon's looks on the open connection:

  * `look(identifier)`: the instance's processing state now (L20, before an
    unload; the status command);
  * `look_listed()`: `listLoaded`, each managed instance's `lastUsedTime`
    (the idle deadline, the status command).

Every finding goes to the `on_observation` callback, on the event loop, as one
of four frozen records, and only when it changed:

  * `InstanceState`: busy or idle, what it is doing, `queued`;
  * `InstanceLastUsed`: LM Studio's `lastUsedTime`, as unix ms and converted to
    the caller's monotonic clock (`last_used`);
  * `InstanceGone`: a managed instance a look found not loaded (once until it
    is seen again), so the caller can re-read the server at once (L18);
  * `Availability`: `source` is "lmstudio" or "clients only" (with `reason`:
    "older server", "auth refused", "rpc missing", "unreachable"). Whenever the
    source leaves "lmstudio", earlier `InstanceState`s no longer hold.

A connection that closes or fails is retried with a short backoff (0.25 s
doubling to `backoff_max`, 1 s), so an LM Studio restart is noticed within about
a second of its return; "older server" and "auth refused" only every
`settled_retry` (5 min), or at once when an instance becomes ours. "rpc missing"
keeps the connection (for `lastUsedTime`, and as the liveness signal), and asks
again when an instance becomes ours. Each connection starts with one probe of the state
RPC (a query that matches nothing).

The callback must not block; the watcher never raises into it, and
`set_managed`/`set_waiting` only record the sets and wake the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from lmkeeperd.errors import AuthError, ChannelMissing, RpcMissing, ServerError, ServerUnreachable
from lmkeeperd.lmstudio.channel import InstanceInfo, LMStudioChannel

log = structlog.get_logger()

LMSTUDIO = "lmstudio"
CLIENTS_ONLY = "clients only"
_PROBE_IDENTIFIER = "lmkeeperd-probe-no-such-instance"


@dataclass(frozen=True, slots=True)
class InstanceState:
    identifier: str
    busy: bool
    status: str  # "idle" | "processingPrompt" | "generating" | "computingEmbedding" | ...
    queued: int


@dataclass(frozen=True, slots=True)
class InstanceLastUsed:
    identifier: str
    last_used: float  # on the caller's monotonic clock
    last_used_unix_ms: float


@dataclass(frozen=True, slots=True)
class InstanceGone:
    """A managed instance a look found not loaded (unloaded behind our back, L18)."""

    identifier: str


@dataclass(frozen=True, slots=True)
class Availability:
    source: str  # LMSTUDIO | CLIENTS_ONLY
    reason: str | None = None  # "older server" | "auth refused" | "rpc missing" | "unreachable"
    detail: str = ""  # the error's message (never the token)


Observation = InstanceState | InstanceLastUsed | InstanceGone | Availability


class ActivitySource(Protocol):
    """What the daemon needs from an activity watcher."""

    def set_managed(self, identifiers: Collection[str]) -> None: ...

    def set_waiting(self, identifiers: Collection[str]) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


ChannelFactory = Callable[[], LMStudioChannel]


class ActivityWatcher:
    """Keeps LM Studio's channel open and looks when asked; see the module docstring."""

    def __init__(
        self,
        channel_factory: ChannelFactory,
        on_observation: Callable[[Observation], None],
        *,
        state_interval: float = 1.0,
        backoff_start: float = 0.25,
        backoff_max: float = 1.0,
        settled_retry: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._factory = channel_factory
        self._on_observation = on_observation
        self._state_interval = state_interval
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._settled_retry = settled_retry
        self._monotonic = monotonic
        self._wall = wall
        self._managed: frozenset[str] = frozenset()
        self._waiting: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._availability: Availability | None = None
        self._states: dict[str, InstanceState] = {}
        self._last_used: dict[str, float] = {}
        self._gone: set[str] = set()  # reported as gone, not seen since
        # The open connection, for the looks; None between connections.
        self._channel: LMStudioChannel | None = None
        self._rpc_missing = False

    @property
    def availability(self) -> Availability | None:
        """The last availability reported (None before the first attempt ends)."""
        return self._availability

    @property
    def connected(self) -> bool:
        """The channel is open now: its closing will say that LM Studio went away."""
        channel = self._channel
        return channel is not None and channel.is_open

    def set_managed(self, identifiers: Collection[str]) -> None:
        managed = frozenset(identifiers)
        if managed != self._managed:
            if managed and not self._managed:
                # A refused or older channel, or a missing RPC, is tried again now.
                self._retry_now.set()
                self._wake.set()
            self._managed = managed
            # An instance managed again later is reported afresh.
            for table in (self._states, self._last_used):
                for gone in [i for i in table if i not in managed]:
                    del table[gone]
            self._gone &= managed
            self.set_waiting(self._waiting & managed)

    def set_waiting(self, identifiers: Collection[str]) -> None:
        """Look at these instances about once a second until they leave the set (L29)."""
        waiting = frozenset(identifiers)
        if waiting != self._waiting:
            self._waiting = waiting
            self._wake.set()

    async def look(self, identifier: str) -> InstanceState | None:
        """Ask LM Studio now what `identifier` is doing (L20, status).

        Uses the open connection; None when it cannot say (no connection, the RPC
        missing, not loaded, any failure). Never raises a ServerError. The answer is
        also reported to the callback if it changed.
        """
        channel = self._channel
        if channel is None or not channel.is_open or self._rpc_missing:
            return None
        try:
            state = await channel.processing_state(identifier=identifier)
        except ServerError:
            return None
        if state is None:
            self._not_loaded(identifier)
            return None
        self._gone.discard(identifier)
        if identifier in self._managed:
            self._observe_state(identifier, state.busy, state.status, state.queued)
        return InstanceState(identifier, state.busy, state.status, state.queued)

    async def look_listed(self) -> list[InstanceInfo] | None:
        """`listLoaded` now: reports the managed instances' `lastUsedTime` and those gone.

        None when it cannot say (no connection, any failure).
        """
        channel = self._channel
        if channel is None or not channel.is_open:
            return None
        try:
            instances = await channel.list_loaded()
        except ServerError:
            return None
        listed = {info.identifier for info in instances}
        for info in instances:
            if info.identifier in self._managed and info.last_used_ms is not None:
                self._observe_last_used(info.identifier, info.last_used_ms)
        self._gone &= self._managed - listed  # listed again: may go again
        for identifier in sorted(self._managed - listed):
            self._not_loaded(identifier)
        return instances

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lmstudio-activity-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # the task's CancelledError stays in the task

    # -- the task ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._backoff_start
        while True:
            try:
                async with self._factory() as channel:
                    self._channel = channel
                    try:
                        await self._probe(channel)
                        backoff = self._backoff_start
                        await self._serve(channel)
                    finally:
                        self._channel = None
            except Exception as exc:
                if not isinstance(exc, ServerError):
                    # A bug must not end the watching for the daemon's whole life.
                    log.exception("activity_watcher_failed", error=type(exc).__name__)
                self._unavailable(exc)
                # An older server or a refused token does not change within seconds: retried
                # every few minutes (an idle daemon's wake-ups), a lost channel at once and
                # then with a short backoff, so that a restart is noticed within a second.
                if _reason(exc) == "unreachable":
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
                else:
                    await self._settled_pause()

    async def _settled_pause(self) -> None:
        """`settled_retry`, or less: a model that becomes ours is worth a new attempt."""
        self._retry_now.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settled_retry):
                await self._retry_now.wait()

    async def _probe(self, channel: LMStudioChannel) -> None:
        """One look on a new connection: does it have the state RPC?"""
        try:
            await channel.processing_state(identifier=_PROBE_IDENTIFIER)
        except RpcMissing as exc:
            self._rpc_missing = True
            self._unavailable(exc)
            return
        self._rpc_missing = False
        self._available()

    async def _serve(self, channel: LMStudioChannel) -> None:
        """Until the channel closes (raises): look at the waited-on instances once a second."""
        closed = _closing(channel)
        try:
            await self._serve_until(channel, closed)
        finally:
            closed.cancel()

    async def _serve_until(self, channel: LMStudioChannel, closed: asyncio.Future[Any]) -> None:
        while True:
            self._wake.clear()
            polling = bool(self._waiting) and not self._rpc_missing
            wake: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
            try:
                done, _ = await asyncio.wait(
                    {closed, wake},
                    timeout=self._state_interval if polling else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                wake.cancel()
            if closed.done() or not channel.is_open:
                raise ServerUnreachable(f"LM Studio closed the channel at {channel.url}")
            if self._rpc_missing and self._retry_now.is_set():
                self._retry_now.clear()  # a model became ours: is the RPC there now?
                await self._probe(channel)
            if not done:  # a second passed: look at what we wait on
                for identifier in sorted(self._waiting):
                    await self.look(identifier)

    # -- observations (no I/O from here on) --------------------------------------------

    def _not_loaded(self, identifier: str) -> None:
        if identifier in self._managed and identifier not in self._gone:
            self._gone.add(identifier)
            self._states.pop(identifier, None)
            self._emit(InstanceGone(identifier))

    def _observe_state(self, identifier: str, busy: bool, status: str, queued: int) -> None:
        state = InstanceState(identifier, busy, status, queued)
        if self._states.get(identifier) != state:
            self._states[identifier] = state
            self._emit(state)

    def _observe_last_used(self, identifier: str, unix_ms: float) -> None:
        if self._last_used.get(identifier) == unix_ms:
            return
        self._last_used[identifier] = unix_ms
        age = max(0.0, self._wall() - unix_ms / 1000.0)
        self._emit(InstanceLastUsed(identifier, self._monotonic() - age, unix_ms))

    def _available(self) -> None:
        self._set_availability(Availability(LMSTUDIO))

    def _unavailable(self, exc: Exception) -> None:
        self._states.clear()
        self._set_availability(Availability(CLIENTS_ONLY, _reason(exc), str(exc)))

    def _set_availability(self, availability: Availability) -> None:
        # The detail (an error's wording) may vary between attempts; a change is a new
        # source or reason.
        old = self._availability
        if old is None or (old.source, old.reason) != (availability.source, availability.reason):
            self._availability = availability
            self._emit(availability)

    def _emit(self, observation: Observation) -> None:
        try:
            self._on_observation(observation)
        except Exception:
            log.exception("activity_callback_failed", observation=type(observation).__name__)


def _closing(channel: LMStudioChannel) -> asyncio.Future[Any]:
    """Done when `channel` closes: its reader task ends with the socket.

    LMStudioChannel offers no public wait for its end; its reader task is that end.
    Without one (a channel of another make) a timer looks at `is_open` every second.
    """
    reader = getattr(channel, "_reader", None)
    if isinstance(reader, asyncio.Task):
        ended: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(_: object) -> None:
            if not ended.done():
                ended.set_result(None)

        reader.add_done_callback(done)
        return ended

    async def poll() -> Any:
        while channel.is_open:  # noqa: ASYNC110 - a channel without a reader task to await
            await asyncio.sleep(1.0)
        return None

    return asyncio.ensure_future(poll())


def _reason(exc: Exception) -> str:
    if isinstance(exc, AuthError):
        return "auth refused"
    if isinstance(exc, ChannelMissing):
        return "older server"
    if isinstance(exc, RpcMissing):
        return "rpc missing"
    # Dropped, timed out, garbled: all "cannot use it now", retried with backoff.
    return "unreachable"


if TYPE_CHECKING:

    def _is_a_source(watcher: ActivityWatcher) -> ActivitySource:
        return watcher  # mypy checks that the watcher fits the Protocol
