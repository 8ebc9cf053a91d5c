"""The daemon's side of LM Studio's own activity view (L19-L21): the watcher, wired.

    ActivityWatcher ──InstanceState / InstanceLastUsed / Availability──▶ this bridge
        ▲ set_managed (our instances, after every feed)                  │ feed()
        └──────────────── recheck (L20, just before an unload) ◀── server_sync.py

The watcher (lmkeeperd/lmstudio/activity.py) does the I/O on its own task; this
module only turns what it reports into core events (`ServerActivity`,
`ActivitySource`) and tells it which instances are ours. `sync_managed()` runs
after every feed and compares one small set: no I/O there. With nothing of ours
loaded the watcher holds no socket at all.

Clocks: the watcher converts LM Studio's `lastUsedTime` (unix ms) to the driver's
monotonic clock, so the core compares it with its own times directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from lmkeeperd.config import Config
from lmkeeperd.core import ActivitySource, ServerActivity
from lmkeeperd.daemon.context import Host
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
from lmkeeperd.status import ServerActivityStatus

log = structlog.get_logger()

LOOK_TIMEOUT_S = 1.0
"""L20's re-read waits at most this long: an unload must not hang on a slow channel."""


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
        clock: Callable[[], float] = time.monotonic,
        make_watcher: Callable[[Config, Callable[[Observation], None]], ActivityWatcher]
        | None = None,
    ) -> None:
        self._host = host
        self._clock = clock
        self._make_watcher = make_watcher or self._default_watcher
        self._watcher = self._make_watcher(config, self._observe)
        self._managed: frozenset[str] = frozenset()
        self._started = False
        self.availability: Availability | None = None
        self._states: dict[str, InstanceState] = {}
        self._last_used: dict[str, float] = {}
        # Called when the server's REST view should be read now: an instance of ours left
        # listLoaded, or the channel was lost (server_sync.py's reconcile relies on it).
        # The argument: the channel lost the server itself ("unreachable").
        self.on_server_change: Callable[[bool], None] | None = None

    def _default_watcher(
        self, config: Config, on_observation: Callable[[Observation], None]
    ) -> ActivityWatcher:
        return ActivityWatcher(channel_factory(config), on_observation, monotonic=self._clock)

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._watcher.start()
        self._watcher.set_managed(self._managed)

    async def stop(self) -> None:
        self._started = False
        await self._watcher.stop()

    def configure(self, old: Config, new: Config) -> None:
        """Another server or token: a new watcher (it probes afresh and reports)."""
        if new.server == old.server:
            return
        retired = self._watcher
        self._watcher = self._make_watcher(new, self._observe)
        self._states.clear()
        self._last_used.clear()
        if self._started:
            self._host.spawn(retired.stop())
            self._watcher.start()
            self._watcher.set_managed(self._managed)

    # --- after every feed -------------------------------------------------------------

    def sync_managed(self) -> None:
        """Tell the watcher which instances are ours (main, draft, strays, unloading)."""
        owned = self._host.core.owned_instances()
        if owned.keys() != self._managed:
            self._managed = frozenset(owned)
            for table in (self._states, self._last_used):
                for gone in [i for i in table if i not in self._managed]:
                    del table[gone]
            self._watcher.set_managed(self._managed)

    # --- L20 --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        a = self.availability
        return a is not None and a.source == LMSTUDIO

    @property
    def watching(self) -> bool:
        """The channel lists our instances every few seconds (vanishes are seen from it)."""
        return self._started and self.available and bool(self._managed)

    async def look(self, instance_id: str) -> Look:
        """Re-read `instance_id`'s processing state now, for an unload that may cut a use."""
        if not self.available:
            return Look(None, "clients only")
        try:
            async with asyncio.timeout(LOOK_TIMEOUT_S):
                state = await self._watcher.recheck(instance_id)
        except TimeoutError:
            return Look(None, f"no answer within {LOOK_TIMEOUT_S} s")
        return Look(state, None if state is not None else "no answer")

    # --- observations (on the loop, from the watcher's task) ---------------------------

    def _observe(self, observation: Observation) -> None:
        match observation:
            case Availability():
                self.availability = observation
                if observation.source != LMSTUDIO:
                    self._states.clear()  # they no longer hold (the core drops its own)
                    # The REST reconcile takes over at its own pace; it looks now.
                    self._server_changed(outage=observation.reason == "unreachable")
                self._host.feed(ActivitySource(observation.source == LMSTUDIO, observation.reason))
            case InstanceState(identifier=instance):
                self._states[instance] = observation
                # No last_used here: a busy -> idle report means "used until now", while
                # the lastUsedTime we hold may be from before this use (listLoaded is read
                # less often than the state); the core then counts from now.
                self._host.feed(
                    ServerActivity(
                        instance, observation.busy, observation.status, observation.queued
                    )
                )
            case InstanceGone():
                self._server_changed()
            case InstanceLastUsed(identifier=instance, last_used=used):
                self._last_used[instance] = used
                state = self._states.get(instance)
                busy = state.busy if state else instance in self._host.core.busy_instances
                if not busy:  # while busy the use is not over; the idle report counts then
                    self._host.feed(ServerActivity(instance, False, last_used=used))

    def _server_changed(self, outage: bool = False) -> None:
        if self.on_server_change is not None:
            self.on_server_change(outage)

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

    @property
    def reason(self) -> str | None:
        """Why LM Studio's activity cannot be read (None while it can, or before the probe)."""
        a = self.availability
        return None if a is None or a.source == LMSTUDIO else a.reason
