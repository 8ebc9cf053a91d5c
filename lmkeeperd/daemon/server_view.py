"""The server's view: what LM Studio lists, its catalog, and the reconcile (L17, L18, L29).

Every listing goes through here and reaches the core as a reconcile would
(`ServerSnapshot`); after it, instances the journal says are ours and the core
does not track go back to the core as `OwnStray` (L22). Error text is made
printable and capped (transport.printable) before it reaches the core or status.

The REST reconcile is paced by LM Studio's channel (liveness.py): a safety net
at most every 5 minutes while the channel is open, waiting for the channel's
return while it reconnects, `[server] reconcile_interval` without it (L29).
Listings otherwise happen when a decision needs the server's set: before a
load (operations.py), for a selection's check (L23), for `status`, `models`
and a named `unload`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Mapping

import structlog

from lmkeeperd.config import Config
from lmkeeperd.core import OwnStray, ServerSnapshot
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.in_flight import InFlight
from lmkeeperd.daemon.journal import Journal
from lmkeeperd.daemon.liveness import Liveness
from lmkeeperd.daemon.wiring import loaded_map, make_client
from lmkeeperd.errors import LmkeeperError, ServerUnreachable
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.lmstudio.transport import printable

log = structlog.get_logger()

_FIRST_RETRY_S = 1.0
# A listing this recent stands for the server when the journal's strays are collected
# at once (collect_now): at start the selection check has just listed it.
FRESH_FOR_COLLECTING_S = 1.0


class ServerView:
    """Lists LM Studio for the core and keeps its latest answer."""

    def __init__(
        self,
        host: Host,
        config: Config,
        *,
        journal: Journal,
        liveness: Liveness,
        in_flight: InFlight,
        on_listing: Callable[[Collection[str]], None],
    ) -> None:
        self._host = host
        self._journal = journal
        self._liveness = liveness
        self._in_flight = in_flight
        # Called with the catalog after every good listing (selection_check.py).
        self._on_listing = on_listing
        self.client: LMStudioClient = make_client(config)
        self._old_clients: list[LMStudioClient] = []
        # Strays are handed to the core only once the selection to start with has reached
        # it (the daemon says when): before that, an instance of the model about to be
        # restored would look unwanted and be unloaded, then loaded again (L22).
        self.collecting = False
        self.reachable: bool | None = None
        self.error: str | None = None
        self.loaded: dict[str, tuple[str, ...]] = {}
        self._models: dict[str, ModelInfo] = {}
        self.listed_at: float | None = None  # time.monotonic() of the last good listing

    # --- what others read ---------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def models(self) -> Mapping[str, ModelInfo]:
        """The last listing: model key -> what the server said of it."""
        return self._models

    def reconcile_interval_now(self) -> float:
        """The REST reconcile's pace now: a safety net while the channel is open (L29).

        While a load of ours may still land (the journal says so), only a listing shows
        it, and a decision waits on it (L22): the reconcile keeps `reconcile_interval`.
        """
        interval = self._host.config.server.reconcile_interval
        if self._journal.awaiting_landing:
            return interval
        return self._liveness.interval(interval)

    def model_type(self, model: str) -> str | None:
        """The type the server listed for `model` ("llm", "embedding"); None if unlisted."""
        info = self._models.get(model)
        return None if info is None else info.type

    def known_catalog(self) -> Collection[str] | None:
        """The keys of the last good listing, None before the first one."""
        return None if self.listed_at is None else frozenset(self._models)

    # --- listings -------------------------------------------------------------

    def note(self, models: list[ModelInfo]) -> None:
        """A good listing, whoever made it."""
        self._models = {m.key: m for m in models}
        self.loaded = loaded_map(models)
        self.listed_at = time.monotonic()
        self._on_listing(frozenset(self._models))

    async def list_now(self) -> None:
        """List the server and note it (no snapshot); raises LmkeeperError."""
        self.note(await self.client.list_models())

    async def catalog(self, max_age: float) -> Collection[str] | None:
        """Every model key the server lists, from a listing at most `max_age` s old (L23).

        None when the server cannot be listed now: the caller cannot check against it.
        """
        fresh = self.listed_at is not None and time.monotonic() - self.listed_at <= max_age
        if not (fresh and self.reachable):
            try:
                await self.list_now()
            except LmkeeperError:
                return None
        return frozenset(self._models)

    def _snapshot(self, models: list[ModelInfo], *, after_outage: bool) -> None:
        """A fresh listing: the core's view first, then what the journal says is ours (L22)."""
        self.note(models)
        self._host.feed(ServerSnapshot(self.loaded, after_outage=after_outage))
        self._collect()

    def collect_now(self, max_age: float = FRESH_FOR_COLLECTING_S) -> None:
        """What the journal says is ours, from the last listing if it is that fresh (L22):
        at start, before the restored selection's debounce can load beside it (L25)."""
        if self.listed_at is not None and time.monotonic() - self.listed_at <= max_age:
            self._collect()

    def _collect(self) -> None:
        if not self.collecting:
            return
        owned = self._host.core.owned_instances()
        loading = set(self._in_flight.loading.values())
        for model, instance in self._journal.collect(self.loaded, owned, loading):
            self._host.feed(OwnStray(model, instance, self._journal.leaving(instance)))

    async def refresh(self, tries: int = 3) -> str | None:
        """List the server now and hand the core the snapshot; the error, if any.

        A listing that raced a load or unload outcome is stale and taken again,
        up to `tries` times (then the core keeps its view).
        """
        for _ in range(tries):
            outcomes = self._in_flight.outcomes
            try:
                models = await self.client.list_models()
            except LmkeeperError as e:
                return printable(str(e))
            if outcomes == self._in_flight.outcomes:
                self._accept(models)
                break
        return None

    async def look_for_status(self, max_age: float) -> None:
        """`status` asks live (L29): a listing unless one is at most `max_age` s old.

        The caller bounds the time; a failure leaves the last view (the reconcile says
        when the server is unreachable).
        """
        listed_at = self.listed_at
        if self.reachable and listed_at is not None and time.monotonic() - listed_at <= max_age:
            return
        outcomes = self._in_flight.outcomes
        try:
            models = await self.client.list_models()
        except LmkeeperError:
            return
        if outcomes == self._in_flight.outcomes:
            self._accept(models)

    def _accept(self, models: list[ModelInfo]) -> None:
        """A good listing of the server: its return is announced, an outage is counted (L17)."""
        after_outage = self._liveness.take_outage() or self.reachable is not True
        was_reachable = self.reachable
        self.reachable, self.error = True, None
        if was_reachable is not True:
            self._host.announce("server_reachable", {"url": self.client.base_url})
        self._snapshot(models, after_outage=after_outage)

    def _failed(self, e: LmkeeperError) -> None:
        self.error = printable(str(e))
        if self.reachable is not False:
            self.reachable = False
            self._host.announce(
                "server_unreachable", {"url": self.client.base_url, "error": self.error}
            )

    async def reconcile_loop(self) -> None:
        retry = _FIRST_RETRY_S
        while True:
            self._liveness.clear()
            interval = self.reconcile_interval_now()  # the backoff's ceiling
            outcomes = self._in_flight.outcomes
            try:
                models = await self.client.list_models()
            except LmkeeperError as e:
                self._failed(e)
                # Back off from ~1 s up to the reconcile interval; a refused token is not
                # retried any faster than the interval (lmstudio-api.md); while the channel
                # reconnects, its return asks for the next look (L29).
                transient = isinstance(e, ServerUnreachable) and not self._liveness.awaits_channel
                backoff = min(retry, interval)
                retry = min(retry * 2, interval)
                if transient:
                    await self._liveness.wait(_fixed(backoff))
                    continue
            else:
                if outcomes != self._in_flight.outcomes and self.reachable:
                    continue  # a load or unload finished meanwhile: this view is stale
                retry = _FIRST_RETRY_S
                self._accept(models)
            await self._liveness.wait(self.reconcile_interval_now)

    def recheck_now(self) -> None:
        """Look at the server soon (a load or unload failed as unreachable)."""
        self._liveness.recheck_now()

    # --- config and life ----------------------------------------------------

    def configure(self, old: Config, new: Config) -> None:
        """A reloaded config: another server gets a new client."""
        if new.server != old.server:
            self._old_clients.append(self.client)
            self.client = make_client(new)
            # Another server is like one coming back from an outage: what the core
            # wanted is restored there, not mistaken for a model unloaded by hand.
            self.reachable = None
            self._liveness.recheck_now()

    async def aclose(self) -> None:
        for client in [self.client, *self._old_clients]:
            with contextlib.suppress(Exception):
                await client.aclose()


def _fixed(seconds: float) -> Callable[[], float]:
    return lambda: seconds
