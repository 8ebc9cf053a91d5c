"""`ActivityWatcher`: what LM Studio itself says our instances are doing.

Theory of operation
-------------------
The daemon tells the watcher which loaded instances it manages
(`set_managed(identifiers)`, non-blocking, any time). While that set is empty the
watcher does nothing at all: no socket, no timer (idle stays idle). While it is
not, one task keeps one `/llm` channel open and

  * calls `listLoaded` every `list_interval` (3 s): each managed instance's
    `instanceReference` and `lastUsedTime`;
  * calls `getInstanceProcessingState` every `state_interval` (1 s) for each
    managed instance that is loaded.

Every finding goes to the `on_observation` callback, on the event loop, as one
of four frozen records, and only when it changed:

  * `InstanceState`: busy or idle, what it is doing, `queued`;
  * `InstanceLastUsed`: LM Studio's `lastUsedTime`, as unix ms and converted to
    the caller's monotonic clock (`last_used`);
  * `InstanceGone`: a managed instance `listLoaded` no longer shows (once until it
    is listed again), so the caller can re-read the server at once (L18);
  * `Availability`: `source` is "lmstudio" or "clients only" (with `reason`:
    "older server", "auth refused", "rpc missing", "unreachable"). Whenever the
    source leaves "lmstudio", earlier `InstanceState`s no longer hold.

A failed connection is retried with backoff (1 s doubling to 30 s) while
something is managed; "older server" and "auth refused" only every
`settled_retry` (5 min). "rpc missing" keeps the connection for `lastUsedTime`
and re-tries the RPC only on the next connection. At `start()`, with nothing
managed yet, the watcher connects once to learn the availability (probing the
RPC with a query that matches nothing) and closes again.

The callback must not block; the watcher does no I/O on the caller's behalf,
never raises into it, and `set_managed` only records the set and wakes the task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from lmkeeperd.errors import AuthError, ChannelMissing, RpcMissing, ServerError
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
    """A managed instance that `listLoaded` no longer shows (unloaded behind our back, L18)."""

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

    def start(self) -> None: ...

    async def stop(self) -> None: ...


ChannelFactory = Callable[[], LMStudioChannel]


class ActivityWatcher:
    """Watches LM Studio's channel for the instances we manage; see the module docstring."""

    def __init__(
        self,
        channel_factory: ChannelFactory,
        on_observation: Callable[[Observation], None],
        *,
        list_interval: float = 3.0,
        state_interval: float = 1.0,
        backoff_start: float = 1.0,
        backoff_max: float = 30.0,
        settled_retry: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._factory = channel_factory
        self._on_observation = on_observation
        self._list_interval = list_interval
        self._state_interval = state_interval
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._settled_retry = settled_retry
        self._monotonic = monotonic
        self._wall = wall
        self._managed: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._availability: Availability | None = None
        self._states: dict[str, InstanceState] = {}
        self._last_used: dict[str, float] = {}
        self._gone: set[str] = set()  # reported as gone, not listed since
        # The connection being watched on, for recheck(); None between connections.
        self._channel: LMStudioChannel | None = None
        self._rpc_missing = False

    @property
    def availability(self) -> Availability | None:
        """The last availability reported (None before the first attempt ends)."""
        return self._availability

    def set_managed(self, identifiers: Collection[str]) -> None:
        managed = frozenset(identifiers)
        if managed != self._managed:
            self._managed = managed
            # An instance managed again later is reported afresh.
            for table in (self._states, self._last_used):
                for gone in [i for i in table if i not in managed]:
                    del table[gone]
            self._gone &= managed
            self._wake.set()

    async def recheck(self, identifier: str) -> InstanceState | None:
        """Ask LM Studio now what `identifier` is doing (L20, just before an unload).

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
            return None
        if identifier in self._managed:
            self._observe_state(identifier, state.busy, state.status, state.queued)
        return InstanceState(identifier, state.busy, state.status, state.queued)

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
        await self._probe()
        backoff = self._backoff_start
        while True:
            while not self._managed:
                await self._idle()
            try:
                async with self._factory() as channel:
                    backoff = self._backoff_start
                    await self._watch(channel)
            except Exception as exc:
                if not isinstance(exc, ServerError):
                    # A bug must not end the watching for the daemon's whole life.
                    log.exception("activity_watcher_failed", error=type(exc).__name__)
                self._unavailable(exc)
                # An older server or a refused token does not change within seconds: retried
                # every few minutes (an idle daemon's wake-ups), a dropped channel with backoff.
                transient = _reason(exc) == "unreachable"
                await self._pause(backoff if transient else self._settled_retry)
                backoff = min(backoff * 2, self._backoff_max)

    async def _probe(self) -> None:
        """One look at start: is the channel there, and does it have the state RPC?"""
        try:
            async with self._factory() as channel:
                await channel.processing_state(identifier=_PROBE_IDENTIFIER)
                self._available()
        except ServerError as exc:
            self._unavailable(exc)

    async def _idle(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    async def _pause(self, seconds: float) -> None:
        # A change of the managed set (e.g. a fresh load) does not cut the backoff short:
        # a server that refused us a second ago would refuse again.
        await asyncio.sleep(seconds)

    async def _watch(self, channel: LMStudioChannel) -> None:
        """Poll until nothing is managed (returns) or the channel fails (raises)."""
        self._channel, self._rpc_missing = channel, False
        try:
            await self._poll(channel)
        finally:
            self._channel = None

    async def _poll(self, channel: LMStudioChannel) -> None:
        references: dict[str, str] = {}
        next_list = 0.0
        listed_for: frozenset[str] = frozenset()
        while managed := self._managed:
            now = self._monotonic()
            # A newly managed instance needs its reference now, not at the next listing.
            listing = now >= next_list or not managed <= listed_for
            polled = [] if self._rpc_missing else sorted(managed & references.keys())
            calls: list[Awaitable[Any]] = [
                channel.processing_state(reference=references[i]) for i in polled
            ]
            if listing:
                next_list, listed_for = now + self._list_interval, managed
                calls.append(channel.list_loaded())
            # One round trip for everything due: each wake-up of an idle daemon costs more
            # than the calls themselves (docs/performance.md, activity).
            results = await _all(calls)
            if listing:
                listed = results.pop()
                if isinstance(listed, BaseException):
                    raise listed
                references = self._listed(listed)
                if managed - references.keys():
                    # Not listed (yet): a load may be landing; look again at the state pace,
                    # or a generation on it could start and end unseen between listings.
                    next_list = min(next_list, now + self._state_interval)
            if polled:
                if self._states_read(polled, results):
                    next_list = 0.0  # one went away: look again at once
            elif not self._rpc_missing and listing:
                self._available()  # nothing loaded to ask about, but the channel answers
            if not self._rpc_missing and managed & references.keys() - set(polled):
                continue  # just listed: ask about the instances found, without waiting
            await self._sleep(self._state_interval)

    async def _sleep(self, seconds: float) -> None:
        """Until `seconds` pass or `set_managed` wakes us.

        A timer handle that sets the wake event, as the driver's loop does: no task per
        wait (wait_for), and no cancellation raised and caught every second
        (asyncio.timeout), which cost more than the poll it paces.
        """
        self._wake.clear()
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    def _states_read(self, polled: list[str], results: list[Any]) -> bool:
        """Report what the state calls found; True when an instance was not loaded."""
        missing = next((r for r in results if isinstance(r, RpcMissing)), None)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if missing is not None:
            self._rpc_missing = True
            self._unavailable(missing)
            return False
        if failed is not None:
            raise failed
        # Availability first: states are only meaningful once it says "lmstudio".
        self._available()
        gone = False
        for identifier, state in zip(polled, results, strict=True):
            if state is None:
                gone = True
            else:
                self._observe_state(identifier, state.busy, state.status, state.queued)
        return gone

    def _listed(self, instances: list[InstanceInfo]) -> dict[str, str]:
        references: dict[str, str] = {}
        for info in instances:
            references[info.identifier] = info.instance_reference
            if info.identifier in self._managed and info.last_used_ms is not None:
                self._observe_last_used(info.identifier, info.last_used_ms)
        self._gone &= self._managed - references.keys()  # listed again: may go again
        for identifier in sorted(self._managed - references.keys() - self._gone):
            self._gone.add(identifier)
            self._emit(InstanceGone(identifier))
        return references

    # -- observations (no I/O from here on) --------------------------------------------

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


async def _all(calls: list[Awaitable[Any]]) -> list[Any]:
    """Each call's result or exception, in order; one call is awaited without a task."""
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except Exception as exc:
            return [exc]
    return list(await asyncio.gather(*calls, return_exceptions=True))


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
