"""L23: a selection is checked against the server's catalog before the core sees it.

Every selection that names a model for the long run comes through here: the
control socket's `select`, a changed `[model] selected` in the config file, and
the selection restored at start. (A proxied request names a model the server
has just listed: the proxy's gate needs no check, and LM Studio answers an
unknown model 404 itself.)

The decision is pure (`check_selection` in lmkeeperd/core/policy.py); this
module fetches the catalog, stores what is accepted and feeds the core:

- known key: `Select`, then stored for the next start (when asked): the reply
  waits until the file is in place, its fsyncs follow in a thread;
- unknown key: refused with the nearest keys, `selection_unknown` (warning);
  nothing is stored, nothing reaches the core, so nothing is unloaded;
- no catalog (the server cannot be listed): accepted and stored, and checked
  when the next listing succeeds (`PendingCheck.listed`); refused then if unknown, and
  the stored selection goes back to what it was. While a model is ours it is
  kept until then (nothing unloaded for a key that may not exist); with none,
  the core has it at once, so its load says why the server cannot be used
  (a refused token, a server too old) and the selection is shown in status.

A resident (L24: a model of ours LM Studio holds loaded, the current one or one
beside it) is known to exist: its selection asks LM Studio nothing (L29). It is
listed, so L23 has nothing to check; its estimate is in the core already (L25);
it needs no room, so no resident is looked at; it is fed and stored at once.

Only the newest selection counts: one whose check finished after a newer one
started is dropped, as the core itself keeps only the latest (L3).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

import lmkeeperd.daemon.selection as selection
from lmkeeperd.core import CoreView, KnownKey, Select, State, UnknownKey, check_selection
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.server_view import ServerView

log = structlog.get_logger()

CATALOG_MAX_AGE_S = 3.0
"""A listing older than this is taken again before a check: keys come and go with downloads."""


def resident(core: CoreView, model: str) -> bool:
    """L24: `model` is loaded on the server as ours (current and serving, or beside it)."""
    if model in core.residents:
        return True
    return model == core.model and core.state in (State.LOADED, State.STREAMING)


@dataclass(frozen=True, slots=True)
class _Deferred:
    model: str
    source: str
    stored: bool  # it was stored on acceptance: a refusal puts the previous one back
    previous: selection.StoredSelection | None
    fed: bool  # the core already has it (it had no model to keep)
    keep_alive: float | None = None  # the selection's own idle timeout (select --keep-alive)
    default_idle: bool = False  # `--keep-alive default`: back to [model] idle_timeout


class PendingCheck:
    """The selection accepted unchecked, checked when the next listing succeeds.

    Built before the server view, which calls `listed` after every good listing.
    """

    def __init__(self, host: Host, *, state_file: Path) -> None:
        self._host = host
        self._state_file = state_file
        self.deferred: _Deferred | None = None

    def listed(self, catalog: Collection[str]) -> None:
        """A listing succeeded: check the selection accepted while the server was away."""
        deferred, self.deferred = self.deferred, None
        if deferred is None:
            return
        verdict = check_selection(deferred.model, catalog)
        if isinstance(verdict, UnknownKey):
            if deferred.stored:
                self._restore(deferred.previous)
            # Fed already (there was no model to keep): its load fails as not downloaded
            # (L6), which is all an unknown key can cost then.
            refused(self._host, verdict, deferred.source)
            return
        if not deferred.fed:
            self._host.feed(Select(deferred.model, deferred.keep_alive, deferred.default_idle))

    def _restore(self, previous: selection.StoredSelection | None) -> None:
        if previous is not None:
            selection.save(self._state_file, previous)
            return
        try:
            self._state_file.unlink(missing_ok=True)
        except OSError as e:
            log.warning("selection_store_failed", path=str(self._state_file), error=str(e))


def refused(host: Host, verdict: UnknownKey, source: str) -> None:
    host.announce(
        "selection_unknown",
        {
            "model": verdict.model,
            "nearest": list(verdict.nearest),
            "source": source,
            "message": verdict.message,
        },
    )


class SelectionChecker:
    """Checks selections against the catalog (see the module docstring)."""

    def __init__(
        self,
        host: Host,
        view: ServerView,
        pending: PendingCheck,
        *,
        state_file: Path,
        estimate: Callable[[str], Awaitable[None]] | None = None,
        look: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._host = host
        # L25: the selected model's estimate reaches the core before the selection does.
        self._estimate = estimate
        # L29: the residents a selection could evict are looked at before it is placed.
        self._look = look
        self._view = view
        self._pending = pending
        self._state_file = state_file
        self._generation = itertools.count(1)
        self._latest = 0
        # The fsyncs of saved selections, run after the replies (one task at a time).
        self._syncing: asyncio.Task[None] | None = None
        self._unsynced = False

    async def select(
        self,
        model: str,
        *,
        source: str,
        store: selection.StoredSelection | None,
        keep_alive: float | None = None,
        default_idle: bool = False,
    ) -> dict[str, Any]:
        """Check `model` and hand it to the core if it may be selected; the socket's reply.

        `store` is what to keep for the next start once accepted (None: keep nothing).
        """
        key = model.strip()
        generation = self._latest = next(self._generation)
        # Set aside while the catalog is fetched: a listing made for this check must not
        # first hand the core an older unchecked selection this one replaces.
        pending = self._pending
        if resident(self._host.core, key):
            # Known to exist and in no need of room: nothing to ask (L23, L24, L29).
            pending.deferred = None  # an older unchecked selection is replaced (L3)
            return self._accept(key, store, keep_alive, default_idle)
        waiting, pending.deferred = pending.deferred, None
        catalog = await self._view.catalog(CATALOG_MAX_AGE_S)
        if generation != self._latest:
            log.debug("selection_superseded", model=key, source=source)
            return {"ok": True, "superseded": True}
        verdict = check_selection(key, catalog)
        if isinstance(verdict, UnknownKey):
            pending.deferred = waiting  # a refused selection changes nothing
            refused(self._host, verdict, source)
            return {"ok": False, "error": verdict.message, "nearest": list(verdict.nearest)}
        if isinstance(verdict, KnownKey):
            if self._estimate is not None:
                await self._estimate(key)
                if generation != self._latest:
                    log.debug("selection_superseded", model=key, source=source)
                    return {"ok": True, "superseded": True}
            if self._look is not None:
                await self._look(key)
                if generation != self._latest:
                    log.debug("selection_superseded", model=key, source=source)
                    return {"ok": True, "superseded": True}
            return self._accept(key, store, keep_alive, default_idle)
        previous = selection.load(self._state_file) if store is not None else None
        if store is not None:
            selection.save(self._state_file, store)
        core = self._host.core
        fed = core.model is None and core.state is State.IDLE
        pending.deferred = _Deferred(
            key, source, store is not None, previous, fed, keep_alive, default_idle
        )
        if fed:
            self._host.feed(Select(key, keep_alive, default_idle))
        self._host.announce(
            "selection_unchecked",
            {"model": key, "source": source, "reason": self._view.error or "server not listed"},
        )
        return {"ok": True, "unchecked": True}

    def _accept(
        self,
        key: str,
        store: selection.StoredSelection | None,
        keep_alive: float | None,
        default_idle: bool,
    ) -> dict[str, Any]:
        # The core first: the load starts before the selection is written for the next
        # start. The reply waits for the file to be in place (a start after a kill -9
        # reads it), not for the disk: the fsyncs, milliseconds on a busy disk, follow.
        self._host.feed(Select(key, keep_alive, default_idle))
        if store is not None:
            selection.save(self._state_file, store, sync=False)
            self._unsynced = True
            if self._syncing is None or self._syncing.done():
                self._syncing = self._host.spawn(self._sync())
        return {"ok": True}

    async def _sync(self) -> None:
        """The saved selection onto the disk; saves made meanwhile are synced in turn."""
        while self._unsynced:
            self._unsynced = False
            await asyncio.to_thread(selection.sync_saved, self._state_file)

    async def select_quietly(
        self, model: str, *, source: str, store: selection.StoredSelection | None
    ) -> None:
        """`select` for selections nobody waits on (the config file, the one restored)."""
        await self.select(model, source=source, store=store)
