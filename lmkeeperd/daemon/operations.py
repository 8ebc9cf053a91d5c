"""Loads and unloads on LM Studio, journaled (L14, L17, L20, L22).

Every request to the server runs as a task and feeds its outcome back to the
core as an event (`LoadFinished`, `LoadFailed`, `UnloadFinished`,
`UnloadFailed`, `UnloadDeferred`). What to do is decided in the pure core
(lmkeeperd/core/policy.py for adopt-or-load); this module only asks the server
and reports what it said.

L22 (nothing of ours left behind): every load and unload is written to the
journal (journal.py) before it is sent. A load the journal says may still land
(an earlier daemon's, or one abandoned at `load_timeout`) is waited for rather
than sent twice.

L30 (one load at a time): LM Studio cannot cancel a load, so a second one sent
while one runs would load both at once. The core never asks for that; should
it ever, the load waits here until the one in flight has returned
(`load_overlap`, an error: a bug of ours), and is sent then. Make-before-break
(L26) is a load while the old model stays loaded: nothing here stops it.

L20: an unload with `look_first` asks LM Studio what the instance is doing
(activity_bridge.py's `look`) and is not sent while it is busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from lmkeeperd.config import Config
from lmkeeperd.core import (
    Adopt,
    Event,
    LoadFailed,
    LoadFinished,
    Missing,
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
from lmkeeperd.daemon.in_flight import InFlight
from lmkeeperd.daemon.journal import Entry, Journal
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.daemon.wiring import make_memory_check
from lmkeeperd.errors import (
    LmkeeperError,
    LoadRefused,
    LoadTimedOut,
    ModelNotFound,
    ServerUnreachable,
)
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.lmstudio.transport import printable

log = structlog.get_logger()

_PENDING_POLL_S = 0.5  # how often a load waiting on an earlier one lists the server


class Operations:
    """Performs the core's `StartLoad` and `StartUnload`; see the module docstring."""

    def __init__(
        self,
        host: Host,
        config: Config,
        *,
        view: ServerView,
        journal: Journal,
        in_flight: InFlight,
        look: Callable[[str], Awaitable[Look]],
        on_load_failed: Callable[[str, str], None],
    ) -> None:
        self._host = host
        self._view = view
        self.journal = journal
        self._in_flight = in_flight
        self._look = look  # L20: re-reads an instance's processing state (activity_bridge.py)
        # A load the core waited for failed: (model, error) to the proxy's switch gate.
        self._on_load_failed = on_load_failed
        self.memory: MemoryCheck = make_memory_check(config)
        self.last_advisory: dict[str, Any] | None = None
        self._held_back: list[StartLoad] = []  # L30: loads asked for while one ran

    @property
    def requests_in_flight(self) -> bool:
        """A load or unload request has not returned yet."""
        return self._in_flight.any

    def configure(self, new: Config) -> None:
        """A reloaded config: the memory settings apply to the next advisory."""
        self.memory = make_memory_check(new)

    def start_load(self, action: StartLoad) -> None:
        if self._in_flight.loading:
            # L30: never two loads in flight, whatever the core asks (a bug of ours).
            log.error(
                "load_overlap",
                model=action.model,
                in_flight=sorted(set(self._in_flight.loading.values())),
                error="the core asked for a load while another is in flight (L30); "
                "it is sent when that one returns",
            )
            self._held_back.append(action)
            return
        self._in_flight.loading[action.op] = action.model
        self._in_flight.tasks[action.op] = self._host.spawn(self._load(action))

    def _next_held_back(self) -> None:
        if self._held_back and not self._in_flight.loading:
            self.start_load(self._held_back.pop(0))

    def start_unload(self, action: StartUnload) -> None:
        self._in_flight.tasks[action.op] = self._host.spawn(self._unload(action))

    def _outcome(self, event: Event) -> None:
        self._in_flight.outcomes += 1
        if isinstance(event, LoadFinished | LoadFailed):
            # Returned: a load the core asks for in answer (a draft, L15) is not an overlap.
            self._in_flight.loading.pop(event.op, None)
        self._host.feed(event)

    def _load_failed(self, action: StartLoad, event: LoadFailed) -> None:
        # The core waits for this load (it was not superseded, L5): a typed outcome for
        # the switch gate, which rejects the requests that waited for the model.
        core = self._host.core
        awaited = not action.draft and core.state is State.LOADING and core.model == action.model
        self._outcome(event)
        if awaited:
            self._on_load_failed(action.model, event.error)

    async def _load(self, action: StartLoad) -> None:
        key: str | None = None
        view = self._view
        try:
            # A fresh look at the server first: lmkeeperd never loads a model that
            # already has an instance; it adopts it instead (L17).
            await view.list_now()
            pending = self.journal.pending_load(action.model)
            if pending is not None:
                # A load of ours may still land (L22): wait for it, never send a second.
                instance = await self._await_pending(action, *pending)
                if instance is not None:
                    self._outcome(LoadFinished(action.op, instance))
                    return
                await view.list_now()
            info = view.models.get(action.model)
            plan = adopt_or_load(
                action.model,
                None if info is None else info.instance_ids,
                action.avoid,
                server=view.base_url,
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
            result = await view.client.load(action.model, action.load_config)
            self.journal.hold(action.model, result.instance_id, key)
            self._outcome(LoadFinished(action.op, result.instance_id))
        except LoadTimedOut as e:
            # The server may still finish it: the journal keeps it so the reconcile
            # collects its instance when it appears (L22).
            if key is not None:
                self.journal.abandon(key)
                view.recheck_now()  # the reconcile keeps its pace until it lands (L29)
            self._load_failed(action, LoadFailed(action.op, str(e), abandoned=key is not None))
        except ServerUnreachable as e:
            if key is not None:
                self.journal.settle(key)  # a server that went away forgets its loads
            view.recheck_now()  # the reconcile notices the outage and retries
            self._load_failed(action, LoadFailed(action.op, printable(str(e)), unreachable=True))
        except LmkeeperError as e:
            if key is not None:
                self.journal.settle(key)  # refused: nothing will land
            # L27: LM Studio's guardrails said no; the core may make room and retry.
            refused = isinstance(e, LoadRefused)
            self._load_failed(action, LoadFailed(action.op, printable(str(e)), refused=refused))
        except Exception as e:  # never let a bug in here stop the daemon
            if key is not None:
                self.journal.release(key)  # unknown: the reconcile will see
            log.exception("load_crashed", model=action.model)
            self._load_failed(action, LoadFailed(action.op, printable(f"internal error: {e!r}")))
        finally:
            # Cancelled (the stop's bound ran out): the entry stays for the next start.
            self._in_flight.tasks.pop(action.op, None)
            self._in_flight.loading.pop(action.op, None)
            if not self._host.core.stopped:
                self._next_held_back()

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
                listed = self._view.loaded.get(action.model, ())
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
                await self._view.list_now()
        finally:
            self.journal.release(key)

    async def _unload(self, action: StartUnload) -> None:
        key = self.journal.begin_unload(action.model, action.instance_id)
        try:
            if action.look_first:
                look = await self._look(action.instance_id)
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
            await self._view.client.unload(action.instance_id)
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
                self._view.recheck_now()
            self._outcome(UnloadFailed(action.op, printable(str(e))))
        except Exception as e:
            self.journal.release(key)
            log.exception("unload_crashed", model=action.model)
            self._outcome(UnloadFailed(action.op, printable(f"internal error: {e!r}")))
        finally:
            self._in_flight.tasks.pop(action.op, None)

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
