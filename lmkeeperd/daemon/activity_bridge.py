"""The daemon's side of LM Studio's own activity view (L19-L21, L29): the watcher, wired.

    ActivityWatcher ──InstanceState / InstanceLastUsed / InstanceGone / Availability──▶ bridge
        ▲ set_managed, set_waiting (after every feed)                               │ feed()
        └── look: before an unload (L20), at the idle deadline, for `status` ◀── driver, ops

The watcher (lmkeeperd/lmstudio/activity.py) keeps the channel open and does
the I/O; this module turns what it reports into core events (`ServerActivity`,
`ActivitySource`), tells it which instances are ours and which the core holds
busy (those it looks at about once a second until they are idle, L29), and
tells the REST reconcile what the channel says of the server (liveness.py).
`sync_managed()` runs after every feed and compares small sets: no I/O there.

Nothing is asked of LM Studio on a timer: a look happens when a decision is
due (the idle deadline, an unload, a `status` request) or while the core waits
on a busy instance (L29).

Clocks: the watcher converts LM Studio's `lastUsedTime` (unix ms) to the driver's
monotonic clock, so the core compares it with its own times directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from lmkeeperd.config import Config
from lmkeeperd.core import ActivitySource, ServerActivity
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.liveness import Liveness
from lmkeeperd.lmstudio.activity import (
    LMSTUDIO,
    ActivityWatcher,
    Availability,
    InstanceGone,
    InstanceLastUsed,
    InstanceState,
    Observation,
)
from lmkeeperd.lmstudio.channel import LMStudioChannel
from lmkeeperd.secret import Secret
from lmkeeperd.status_types import ServerActivityStatus

log = structlog.get_logger()

LOOK_TIMEOUT_S = 1.0
"""L20's re-read waits at most this long: an unload must not hang on a slow channel."""

STATUS_LOOK_S = 0.25
"""`status` waits at most this long for LM Studio's answer, then shows the last known (L29)."""

STATUS_CACHE_S = 1.0
"""A live look younger than this serves a burst of `status` requests."""


@dataclass(frozen=True, slots=True)
class Look:
    """What L20's look before an unload found: `state` None when it could not look."""

    state: InstanceState | None
    why_not: str | None = None  # "clients only", "no answer", ... when state is None


def channel_factory(config: Config) -> Callable[[], LMStudioChannel]:
    """Channels to `[server] url`, with the token the REST client uses (read once here)."""
    s = config.server
    token = Secret.from_env(s.api_token_env)
    # Calls are small and local; a call slower than this means the channel is not usable.
    call_timeout = min(5.0, s.request_timeout)

    def make() -> LMStudioChannel:
        # reveal() only here, where the token is handed to the channel that sends it.
        return LMStudioChannel(
            base_url=s.url,
            token=None if token is None else token.reveal(),
            token_env=s.api_token_env,
            call_timeout=call_timeout,
            open_timeout=s.request_timeout,
        )

    return make


class ActivityBridge:
    """Runs the watcher for the driver; see the module docstring."""

    def __init__(
        self,
        host: Host,
        config: Config,
        *,
        liveness: Liveness,
        clock: Callable[[], float] = time.monotonic,
        make_watcher: Callable[[Config, Callable[[Observation], None]], ActivityWatcher]
        | None = None,
    ) -> None:
        self._host = host
        self._liveness = liveness
        self._clock = clock
        self._make_watcher = make_watcher or self._default_watcher
        self._watcher = self._make_watcher(config, self._observe)
        self._managed: frozenset[str] = frozenset()
        self._started = False
        self.availability: Availability | None = None
        self._states: dict[str, InstanceState] = {}
        self._last_used: dict[str, float] = {}
        self._looked_at: float | None = None  # the clock when status last looked live

    def _default_watcher(
        self, config: Config, on_observation: Callable[[Observation], None]
    ) -> ActivityWatcher:
        return ActivityWatcher(channel_factory(config), on_observation, monotonic=self._clock)

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._watcher.start()
        self._tell_watcher()

    async def stop(self) -> None:
        self._started = False
        await self._watcher.stop()

    def configure(self, old: Config, new: Config) -> None:
        """Another server or token: a new watcher (it connects afresh and reports)."""
        if new.server == old.server:
            return
        retired = self._watcher
        self._watcher = self._make_watcher(new, self._observe)
        self._states.clear()
        self._last_used.clear()
        self._looked_at = None
        if self._started:
            self._host.spawn(retired.stop())
            self._watcher.start()
            self._tell_watcher()

    # --- after every feed -------------------------------------------------------------

    def sync_managed(self) -> None:
        """Tell the watcher which instances are ours, and which the core holds busy."""
        owned = self._host.core.owned_instances()
        if owned.keys() != self._managed:
            self._managed = frozenset(owned)
            for table in (self._states, self._last_used):
                for gone in [i for i in table if i not in self._managed]:
                    del table[gone]
        self._tell_watcher()

    def _tell_watcher(self) -> None:
        self._watcher.set_managed(self._managed)
        # L29: while the core holds an instance of ours busy (a deferred eject, a switch
        # queued behind it, an idle timer stopped by it), look about once a second until
        # it is idle; nothing else is asked on a timer.
        self._watcher.set_waiting(self._managed & self._host.core.busy_instances.keys())

    # --- looks (L20, L29) -------------------------------------------------------------

    @property
    def available(self) -> bool:
        a = self.availability
        return a is not None and a.source == LMSTUDIO

    async def look(self, instance_id: str) -> Look:
        """Re-read `instance_id`'s processing state now, for an unload that may cut a use."""
        if not self.available:
            return Look(None, "clients only")
        try:
            async with asyncio.timeout(LOOK_TIMEOUT_S):
                state = await self._watcher.look(instance_id)
        except TimeoutError:
            return Look(None, f"no answer within {LOOK_TIMEOUT_S} s")
        return Look(state, None if state is not None else "no answer")

    async def look_at_deadline(self) -> None:
        """The idle timer fell due (L29): what LM Studio says of our instance, fed first.

        Busy: the core defers (the timer stops, the instance is looked at until idle).
        Idle with a `lastUsedTime` later than ours: the timer is re-armed from it (L19).
        Otherwise the tick that follows ejects, looking once more right before (L20).
        """
        instance = self._host.core.instance_id
        if instance is None or not self.available:
            return
        await self._look_all(instance, LOOK_TIMEOUT_S)

    async def look_for_status(self) -> None:
        """`status` asks live (L29): one round trip within STATUS_LOOK_S, cached 1 s."""
        instance = self._host.core.instance_id
        now = self._clock()
        if instance is None or not self.available:
            return
        if self._looked_at is not None and now - self._looked_at <= STATUS_CACHE_S:
            return
        self._looked_at = now
        await self._look_all(instance, STATUS_LOOK_S)

    async def look_before_select(self, model: str) -> None:
        """L29: a selection may need room, so the residents it could evict are looked at
        first (one round trip, at most LOOK_TIMEOUT_S): every idle-looking, non-pinned
        instance of ours but `model`'s. What is found busy reaches the core before the
        selection does, so placement (L25) never picks a model generating for a client of
        LM Studio's own; L20's look before the unload stays the last guard."""
        core = self._host.core
        if not self.available or model in core.residents or model == core.model:
            return
        pinned, busy = core.settings.pinned, core.busy_instances
        residents = dict(core.residents)
        if core.model is not None and core.instance_id is not None:
            residents[core.model] = core.instance_id
        candidates = [
            instance
            for owner, instance in residents.items()
            if owner not in pinned and instance not in busy
        ]
        if not candidates:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LOOK_TIMEOUT_S):
                await asyncio.gather(*(self._watcher.look(i) for i in candidates))

    async def _look_all(self, instance: str, within: float) -> None:
        """The state and `lastUsedTime` at once, on the open channel; fed as they arrive."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(self._watcher.look(instance), self._watcher.look_listed())

    # --- observations (on the loop, from the watcher's task or a look) -----------------

    def _observe(self, observation: Observation) -> None:
        match observation:
            case Availability():
                was = self.availability
                self.availability = observation
                lost = observation.reason == "unreachable"
                # Only a channel that reads activity makes the REST reconcile a safety net;
                # `clients only` keeps `reconcile_interval` (L29).
                reads = observation.source == LMSTUDIO and self._watcher.connected
                self._liveness.channel(open_=reads, lost=lost)
                if observation.source != LMSTUDIO:
                    self._states.clear()  # they no longer hold (the core drops its own)
                if was is not None:
                    # The channel lost the server, came back, or changed its word: the REST
                    # view is read now (L17: a restart restores what the core wanted; L29).
                    lost_or_back = lost or was.reason == "unreachable"
                    self._liveness.recheck_now(outage=lost_or_back)
                self._host.feed(ActivitySource(observation.source == LMSTUDIO, observation.reason))
            case InstanceState(identifier=instance):
                self._states[instance] = observation
                # No last_used here: a busy -> idle report means "used until now", while
                # the lastUsedTime we hold may be from before this use; the core then
                # counts from now.
                self._host.feed(
                    ServerActivity(
                        instance, observation.busy, observation.status, observation.queued
                    )
                )
            case InstanceGone():
                self._liveness.recheck_now()  # L18: the REST view follows at once
            case InstanceLastUsed(identifier=instance, last_used=used):
                self._last_used[instance] = used
                state = self._states.get(instance)
                busy = state.busy if state else instance in self._host.core.busy_instances
                if not busy:  # while busy the use is not over; the idle report counts then
                    self._host.feed(ServerActivity(instance, False, last_used=used))

    # --- status -----------------------------------------------------------------------

    def server_activity(self, now: float) -> ServerActivityStatus | None:
        """What LM Studio says our main instance is doing; None when it cannot say."""
        instance = self._host.core.instance_id
        if not self.available or instance is None:
            return None
        state = self._states.get(instance)
        used = self._last_used.get(instance)
        if state is None and used is None:
            return None
        return {
            "doing": state.status if state else None,
            "queued": state.queued if state else None,
            "last_used_ago_s": None if used is None else round(max(0.0, now - used), 1),
        }

    def doing(self, instance_id: str) -> str | None:
        """LM Studio's state of `instance_id` ("idle", "generating", ...); None: not read."""
        if not self.available:
            return None
        state = self._states.get(instance_id)
        return state.status if state is not None else None

    @property
    def reason(self) -> str | None:
        """Why LM Studio's activity cannot be read (None while it can, or before the probe)."""
        a = self.availability
        return None if a is None or a.source == LMSTUDIO else a.reason
