"""The daemon's side of LM Studio: loads, unloads, the reconcile, memory pressure.

Every request to the server runs as a task and feeds its outcome back to the
core as an event (`LoadFinished`, `UnloadFailed`, `ServerSnapshot`, ...).
Error text is made printable and capped (transport.printable) before it
reaches the core or status, whatever raised it. What to do is decided in the
pure core (lmkeeperd/core/policy.py for adopt-or-load); this module only asks
the server and reports what it said.

L22 (nothing of ours left behind): every load and unload is written to the
journal (journal.py) before it is sent. A load the journal says may still land
(an earlier daemon's, or one abandoned at `load_timeout`) is waited for rather
than sent twice; after each listing, instances the journal says are ours and
the core does not track go back to the core as `OwnStray`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import structlog

from lmkeeperd.config import Config
from lmkeeperd.core import (
    Adopt,
    Event,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    Missing,
    OwnStray,
    ServerSnapshot,
    StartLoad,
    StartUnload,
    State,
    UnloadDeferred,
    UnloadFailed,
    UnloadFinished,
    adopt_or_load,
)
from lmkeeperd.daemon.activity_bridge import Look
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.journal import Entry, Journal
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.wiring import loaded_map, make_client, make_memory_check
from lmkeeperd.errors import LmkeeperError, LoadTimedOut, ModelNotFound, ServerUnreachable
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.lmstudio.transport import printable
from lmkeeperd.memory.sizes import to_gb

log = structlog.get_logger()

_FIRST_RETRY_S = 1.0
_PENDING_POLL_S = 0.5  # how often a load waiting on an earlier one lists the server
WATCHED_RECONCILE_FACTOR = 4
"""While LM Studio's channel lists our instances every few seconds, the REST reconcile runs
this many times less often: the channel sees an instance of ours vanish first (L18) and
asks for a reconcile then. What else the reconcile finds (models others loaded) shows up
later; the CPU saved is in docs/performance.md (activity)."""


class ServerSync:
    """Talks to LM Studio for the core, and keeps the server's latest view."""

    def __init__(self, host: Host, config: Config, journal: Journal | None = None) -> None:
        self._host = host
        self.journal = journal or Journal(None)
        self.client: LMStudioClient = make_client(config)
        self._old_clients: list[LMStudioClient] = []
        self.memory: MemoryCheck = make_memory_check(config)
        self._recheck = asyncio.Event()
        self._op_tasks: dict[int, asyncio.Task[None]] = {}
        self._loading: dict[int, str] = {}  # load op -> model, while its task runs
        # Strays are handed to the core only once the selection to start with has reached
        # it (the driver says when): before that, an instance of the model about to be
        # restored would look unwanted and be unloaded, then loaded again (L22).
        self.collecting = False
        self._outcomes = 0  # counts load/unload outcomes: a snapshot older than one is stale
        self._pressure_task: asyncio.Task[None] | None = None
        self.reachable: bool | None = None
        self._outage_seen = False  # the channel saw the server go (recheck_now)
        self.error: str | None = None
        self.loaded: dict[str, tuple[str, ...]] = {}
        self.last_advisory: dict[str, Any] | None = None
        self._models: dict[str, ModelInfo] = {}
        self.listed_at: float | None = None  # time.monotonic() of the last good listing
        # Called after every good listing (selection_check.py checks deferred selections).
        self.on_listing: Callable[[], None] | None = None
        # L20: re-reads an instance's processing state (activity_bridge.py); None: never look.
        self.look: Callable[[str], Awaitable[Look]] | None = None
        # True while the channel watches our instances (activity_bridge.py): reconcile less.
        self.watched: Callable[[], bool] | None = None

    # --- what others read ---------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def requests_in_flight(self) -> bool:
        """A load or unload request has not returned yet."""
        return bool(self._op_tasks)

    @property
    def models(self) -> Mapping[str, ModelInfo]:
        """The last listing: model key -> what the server said of it."""
        return self._models

    def reconcile_interval_now(self) -> float:
        """`[server] reconcile_interval`, stretched while the channel watches our instances."""
        interval = self._host.config.server.reconcile_interval
        if self.watched is not None and self.watched():
            return interval * WATCHED_RECONCILE_FACTOR
        return interval

    def recheck_now(self, outage: bool = False) -> None:
        """Read the server now (the channel saw an instance of ours go, or was lost).

        `outage`: the channel lost the server itself. A restart quicker than the REST
        reconcile's own look would otherwise pass for our model unloaded by hand (L18)
        instead of a restart to restore it after (L17).
        """
        self._outage_seen = self._outage_seen or outage
        self._recheck.set()

    def model_type(self, model: str) -> str | None:
        """The type the server listed for `model` ("llm", "embedding"); None if unlisted."""
        info = self._models.get(model)
        return None if info is None else info.type

    # --- loads and unloads --------------------------------------------------

    def start_load(self, action: StartLoad) -> None:
        self._loading[action.op] = action.model
        self._op_tasks[action.op] = self._host.spawn(self._load(action))

    def start_unload(self, action: StartUnload) -> None:
        self._op_tasks[action.op] = self._host.spawn(self._unload(action))

    def _outcome(self, event: Event) -> None:
        self._outcomes += 1
        self._recheck.set()  # let status show the server's new view soon
        self._host.feed(event)

    async def _load(self, action: StartLoad) -> None:
        key: str | None = None
        try:
            # A fresh look at the server first: lmkeeperd never loads a model that
            # already has an instance; it adopts it instead (L17).
            models = await self.client.list_models()
            self._note_models(models)
            pending = self.journal.pending_load(action.model)
            if pending is not None:
                # A load of ours may still land (L22): wait for it, never send a second.
                instance = await self._await_pending(action, *pending)
                if instance is not None:
                    self._outcome(LoadFinished(action.op, instance))
                    return
                self._note_models(await self.client.list_models())
            info = self._models.get(action.model)
            plan = adopt_or_load(
                action.model,
                None if info is None else info.instance_ids,
                action.avoid,
                server=self.client.base_url,
            )
            if isinstance(plan, Missing):
                raise ModelNotFound(plan.message)
            if isinstance(plan, Adopt):
                # An instance the journal says we started is ours, not adopted (L22).
                ours = self.journal.ours(action.model, plan.instance_id)
                if ours is not None:
                    self.journal.hold(action.model, plan.instance_id, ours)
                adopted = ours is None
                self._outcome(LoadFinished(action.op, plan.instance_id, adopted=adopted))
                return
            assert info is not None  # Load: the listing had the model
            self._advise(info)  # runs beside the load: it must never delay it (L12)
            timeout = self._host.config.server.load_timeout
            key = self.journal.begin_load(action.op, action.model, info.instance_ids, timeout)
            result = await self.client.load(action.model, action.load_config)
            self.journal.hold(action.model, result.instance_id, key)
            self._outcome(LoadFinished(action.op, result.instance_id))
        except LoadTimedOut as e:
            # The server may still finish it: the journal keeps it so the reconcile
            # collects its instance when it appears (L22).
            if key is not None:
                self.journal.abandon(key)
            self._outcome(LoadFailed(action.op, str(e), abandoned=key is not None))
        except ServerUnreachable as e:
            if key is not None:
                self.journal.settle(key)  # a server that went away forgets its loads
            self._recheck.set()  # the reconcile loop notices the outage and retries
            self._outcome(LoadFailed(action.op, printable(str(e)), unreachable=True))
        except LmkeeperError as e:
            if key is not None:
                self.journal.settle(key)  # refused: nothing will land
            self._outcome(LoadFailed(action.op, printable(str(e))))
        except Exception as e:  # never let a bug in here stop the daemon
            if key is not None:
                self.journal.release(key)  # unknown: the reconcile will see
            log.exception("load_crashed", model=action.model)
            self._outcome(LoadFailed(action.op, printable(f"internal error: {e!r}")))
        finally:
            # Cancelled (the stop's bound ran out): the entry stays for the next start.
            self._op_tasks.pop(action.op, None)
            self._loading.pop(action.op, None)

    async def _await_pending(self, action: StartLoad, key: str, entry: Entry) -> str | None:
        """Wait for the load in journal entry `key` to land; its instance, or None at its deadline.

        Takes the place of a second load of the same model: after a crash, the earlier
        daemon's load may still be running on the server (instance not listed yet).
        """
        self.journal.claim(key)
        log.info(
            "load_awaited",
            model=action.model,
            started_s_ago=round(max(0.0, time.time() - entry.started), 1),
            until_s=round(max(0.0, entry.deadline - time.time()), 1),
        )
        try:
            while True:
                owned = self._host.core.owned_instances()
                listed = self.loaded.get(action.model, ())
                instance = self.journal.landed(key, listed, owned)
                if instance is not None:
                    self.journal.hold(action.model, instance, key)
                    return instance
                remaining = entry.deadline - time.time()
                if remaining <= 0:
                    self.journal.settle(key)
                    log.info("journal_load_given_up", model=action.model, started=entry.started)
                    return None
                await asyncio.sleep(min(_PENDING_POLL_S, remaining))
                self._note_models(await self.client.list_models())
        finally:
            self.journal.release(key)

    async def _unload(self, action: StartUnload) -> None:
        key = self.journal.begin_unload(action.model, action.instance_id)
        try:
            if action.look_first and self.look is not None:
                look = await self.look(action.instance_id)
                state = look.state
                if state is not None and state.busy:
                    # Not sent: the instance stays ours and loaded (L22's journal says so).
                    self.journal.release(key)
                    self.journal.hold(action.model, action.instance_id)
                    self._outcome(UnloadDeferred(action.op, state.status, state.queued))
                    return
                if state is None:
                    # Clients-only semantics, as before L20: what the core decided stands.
                    log.debug(
                        "unload_look_skipped",
                        op=action.op,
                        instance_id=action.instance_id,
                        why=look.why_not,
                    )
            await self.client.unload(action.instance_id)
            self.journal.settle(key)
            self._outcome(UnloadFinished(action.op))
        except ModelNotFound:
            self.journal.settle(key)
            self._outcome(UnloadFinished(action.op))  # already gone: what we wanted
        except LmkeeperError as e:
            # Kept: while the server still lists the instance, the reconcile hands it
            # back to the core as a stray and its unload is tried again (L22).
            self.journal.release(key)
            if isinstance(e, ServerUnreachable):
                self._recheck.set()
            self._outcome(UnloadFailed(action.op, printable(str(e))))
        except Exception as e:
            self.journal.release(key)
            log.exception("unload_crashed", model=action.model)
            self._outcome(UnloadFailed(action.op, printable(f"internal error: {e!r}")))
        finally:
            self._op_tasks.pop(action.op, None)

    def _advise(self, info: ModelInfo) -> None:
        """L12: warn before a load that likely will not fit; never block or delay it.

        Reading a GGUF header can take tens of milliseconds, so the check runs in a
        thread while the load request is already on its way.
        """
        check = self.memory.advise
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(check, info))
        self._host.track(task)

        def done(task: asyncio.Task[Mapping[str, Any] | None]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                log.error("memory_check_failed", model=info.key, error=str(error))
                return
            advisory = task.result()
            if advisory is not None:
                self.last_advisory = dict(advisory)
                self._host.announce("memory_advisory", advisory)

        task.add_done_callback(done)

    # --- memory-pressure eject ----------------------------------------------

    def sync_pressure_watch(self) -> None:
        """Watch memory only while a model of ours is loaded and the feature is on."""
        below = self._host.config.memory.pressure_eject_below
        wanted = below is not None and self._host.core.state in (State.LOADED, State.STREAMING)
        task = self._pressure_task
        if wanted and (task is None or task.done()):
            self._pressure_task = self._host.spawn(self._watch_pressure())
        elif not wanted and task is not None:
            task.cancel()
            self._pressure_task = None

    async def _watch_pressure(self) -> None:
        from lmkeeperd.memory import PressureWatcher

        watcher = PressureWatcher(self.memory.probe)
        while (below := self._host.config.memory.pressure_eject_below) is not None:
            grace = self._host.config.memory.pressure_grace
            available = await watcher.wait_pressure(below, grace)
            log.warning("memory_pressure", available_gb=to_gb(available), threshold_gb=to_gb(below))
            self._host.feed(MemoryPressure())  # the core ejects only when no stream is open

    # --- the server's view (L17, L18) ---------------------------------------

    def _note_models(self, models: list[ModelInfo]) -> None:
        self._models = {m.key: m for m in models}
        self.loaded = loaded_map(models)
        self.listed_at = time.monotonic()
        if self.on_listing is not None:
            self.on_listing()

    def known_catalog(self) -> Collection[str] | None:
        """The keys of the last good listing, None before the first one."""
        return None if self.listed_at is None else frozenset(self._models)

    async def catalog(self, max_age: float) -> Collection[str] | None:
        """Every model key the server lists, from a listing at most `max_age` s old (L23).

        None when the server cannot be listed now: the caller cannot check against it.
        """
        fresh = self.listed_at is not None and time.monotonic() - self.listed_at <= max_age
        if not (fresh and self.reachable):
            try:
                self._note_models(await self.client.list_models())
            except LmkeeperError:
                return None
        return frozenset(self._models)

    def _snapshot(self, models: list[ModelInfo], *, after_outage: bool) -> None:
        """A fresh listing: the core's view first, then what the journal says is ours (L22)."""
        self._note_models(models)
        self._host.feed(ServerSnapshot(self.loaded, after_outage=after_outage))
        owned = self._host.core.owned_instances()
        if not self.collecting:
            return
        loading = set(self._loading.values())
        for model, instance in self.journal.collect(self.loaded, owned, loading):
            self._host.feed(OwnStray(model, instance))

    async def refresh(self, tries: int = 3) -> str | None:
        """List the server now and hand the core the snapshot; the error, if any.

        A listing that raced a load or unload outcome is stale and taken again,
        up to `tries` times (then the core keeps its view).
        """
        for _ in range(tries):
            outcomes = self._outcomes
            try:
                models = await self.client.list_models()
            except LmkeeperError as e:
                return printable(str(e))
            if outcomes == self._outcomes:
                self._snapshot(models, after_outage=False)
                break
        return None

    async def reconcile_loop(self) -> None:
        retry = _FIRST_RETRY_S
        while True:
            self._recheck.clear()
            interval = self.reconcile_interval_now()
            outcomes = self._outcomes
            try:
                models = await self.client.list_models()
            except LmkeeperError as e:
                self.error = printable(str(e))
                if self.reachable is not False:
                    self.reachable = False
                    self._host.announce(
                        "server_unreachable", {"url": self.client.base_url, "error": self.error}
                    )
                # Back off from ~1 s up to the reconcile interval; a refused token is
                # not retried any faster than the interval (lmstudio-api.md).
                wait = min(retry, interval) if isinstance(e, ServerUnreachable) else interval
                retry = min(retry * 2, interval)
            else:
                if outcomes != self._outcomes and self.reachable:
                    continue  # a load or unload finished meanwhile: this view is stale
                after_outage = self.reachable is not True or self._outage_seen
                was_reachable, self._outage_seen = self.reachable, False
                self.reachable, self.error = True, None
                retry = _FIRST_RETRY_S
                if was_reachable is not True:
                    self._host.announce("server_reachable", {"url": self.client.base_url})
                self._snapshot(models, after_outage=after_outage)
                wait = interval
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on Python 3.11 it swallows a cancellation that arrives just as
                # the event is set, which the stop's own unload does; this loop then outlived
                # the stop and the daemon never exited (tests/daemon/test_e2e_config.py, 1 run
                # in 5).
                async with asyncio.timeout(wait):
                    await self._recheck.wait()

    # --- config and life ----------------------------------------------------

    def configure(self, old: Config, new: Config) -> None:
        """A reloaded config: another server gets a new client, memory settings apply."""
        if new.server != old.server:
            self._old_clients.append(self.client)
            self.client = make_client(new)
            # Another server is like one coming back from an outage: what the core
            # wanted is restored there, not mistaken for a model unloaded by hand.
            self.reachable = None
            self._recheck.set()
        self.memory = make_memory_check(new)

    def observe(self, name: str, fields: Mapping[str, Any]) -> None:
        """An announced event: another engine takes what the core held (L13)."""
        if name == "engine_changed" and fields.get("engine") != "lmstudio":
            self.journal.drop_held()

    async def aclose(self) -> None:
        for client in [self.client, *self._old_clients]:
            with contextlib.suppress(Exception):
                await client.aclose()
