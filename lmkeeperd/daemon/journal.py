"""The journal: every load and unload lmkeeperd sends, written down before it is sent (L22).

A load whose answer never came (the daemon was killed, the load outlasted
`load_timeout`, the stop could not wait for it) may still finish on the
server; an unload that hung or failed leaves its instance loaded. Either way
the server holds an instance lmkeeperd started and nothing tracks. The journal
is how the daemon knows which instances those are, even after a `kill -9`:

- before a load is sent: `load`, the model, the ids of that model's instances
  listed just before (a new one is ours), the wall-clock start and a deadline,
  start + 2 × `load_timeout`: the load is abandoned at `load_timeout` and the
  server may still finish it within another one. Until the deadline nobody
  sends a second load of that model (they wait for this one) and an instance
  that appears is collected; after it, the load is given up;
- when a load of ours lands: `held`, the model and the instance id, until it
  is unloaded (a `kill -9` while a model is loaded leaves an instance of ours
  too); a clean stop, and an engine change away from LM Studio (L13), hand
  what is held over to the user and drop these;
- before an unload is sent: `unload`, the model and the instance id (it
  replaces the instance's `held` entry);
- an entry is removed when its outcome is settled: the answer came, or the
  server shows what happened (the instance appeared, or is gone).

Entries still in the file at start are inherited: the daemon waits for such a
load instead of starting a second one, and reports each instance it finds as an
`OwnStray` to the core, which adopts it (the model it wants) or unloads it.
Instances that were already listed before a load (the user's, or another
program's) are never counted as ours (L18).

The file sits beside the stored selection and belongs to the same config
(paths.journal_file). It is written with fileio.write_atomically (a crash
leaves the old or the new file) and read with fileio.read_small_file: a
corrupt or unsafe journal is reported (`journal_unreadable`) and ignored,
never fatal. A failed write is a warning (`journal_write_failed`): the
daemon keeps working, it only loses what a crash could have taught it.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from lmkeeperd import fileio
from lmkeeperd.errors import UnsafeFileError

log = structlog.get_logger()

Kind = Literal["load", "held", "unload"]
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    model: str
    instance_id: str | None  # the instance held or unloaded; None for a load
    before: tuple[str, ...]  # a load: the model's instances listed before it was sent
    started: float  # wall clock (time.time()) when it was sent
    deadline: float  # wall clock: a load not listed by then is given up


def _entry(raw: Any) -> Entry:
    """One entry from the file, or ValueError naming what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("an entry is not an object")
    kind, model, instance = raw.get("kind"), raw.get("model"), raw.get("instance_id")
    before, started, deadline = raw.get("before", []), raw.get("started"), raw.get("deadline")
    if kind not in ("load", "held", "unload"):
        raise ValueError(f"unknown kind {kind!r}")
    if not isinstance(model, str) or not model:
        raise ValueError("an entry has no model")
    if kind != "load" and (not isinstance(instance, str) or not instance):
        raise ValueError(f"a {kind} entry has no instance_id")
    if not isinstance(before, list) or not all(isinstance(i, str) for i in before):
        raise ValueError("before is not a list of instance ids")
    for name, value in (("started", started), ("deadline", deadline)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} is not a time")
        if not math.isfinite(value):
            raise ValueError(f"{name} is not a time")
    assert isinstance(started, int | float) and isinstance(deadline, int | float)
    return Entry(
        kind,
        model,
        instance if kind != "load" else None,
        tuple(before),
        float(started),
        float(deadline),
    )


class Journal:
    """The loads and unloads in flight, on disk. `path=None` keeps it in memory only."""

    def __init__(self, path: Path | None, *, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall
        self._entries: dict[str, Entry] = {}
        self._in_flight: set[str] = set()  # a task of this process is waiting on these
        # Keys of this daemon's loads must not collide with those an earlier one left.
        self._run = secrets.token_hex(4)

    # --- reading ------------------------------------------------------------

    def open(self) -> int:
        """Read what an earlier daemon left (at start). Returns how many entries it has."""
        if self.path is None:
            return 0
        try:
            data = json.loads(fileio.read_small_file(self.path, fileio.STATE_CAP, what="journal"))
            if not isinstance(data, dict) or data.get("version") != _VERSION:
                raise ValueError(f"not a version {_VERSION} journal")
            raw = data.get("entries")
            if not isinstance(raw, dict):
                raise ValueError("entries is not an object")
            entries = {str(key): _entry(value) for key, value in raw.items()}
        except FileNotFoundError:
            return 0
        except (OSError, UnsafeFileError, ValueError) as e:
            log.warning(
                "journal_unreadable",
                path=str(self.path),
                error=str(e),
                consequence="ignored: instances a crash left behind may stay loaded",
            )
            return 0
        self._entries = entries
        if entries:
            log.info(
                "journal_inherited",
                path=str(self.path),
                loads=sum(e.kind == "load" for e in entries.values()),
                held=sum(e.kind == "held" for e in entries.values()),
                unloads=sum(e.kind == "unload" for e in entries.values()),
            )
        return len(entries)

    def entries(self) -> dict[str, Entry]:
        return dict(self._entries)

    # --- a load or an unload is sent, and settled ----------------------------

    def begin_load(self, op: int, model: str, before: Sequence[str], timeout: float) -> str:
        now = self._wall()
        key = f"load:{self._run}:{op}"
        self._entries[key] = Entry("load", model, None, tuple(before), now, now + 2 * timeout)
        self._in_flight.add(key)
        self._write()
        return key

    def hold(self, model: str, instance_id: str, load_key: str | None = None) -> None:
        """A load of ours landed as `instance_id` (its entry `load_key`, if any, is settled)."""
        if load_key is not None:
            self._in_flight.discard(load_key)
            self._entries.pop(load_key, None)
        now = self._wall()
        self._entries[f"inst:{instance_id}"] = Entry("held", model, instance_id, (), now, now)
        self._write()

    def begin_unload(self, model: str, instance_id: str) -> str:
        # One entry per instance: it replaces the instance's `held` entry, and a retry
        # replaces the entry of the attempt that failed.
        key = f"inst:{instance_id}"
        now = self._wall()
        self._entries[key] = Entry("unload", model, instance_id, (), now, now)
        self._in_flight.add(key)
        self._write()
        return key

    def leaving(self, instance_id: str) -> bool:
        """Was `instance_id` being unloaded (an unload in flight or cut short)?"""
        entry = self._entries.get(f"inst:{instance_id}")
        return entry is not None and entry.kind == "unload"

    def drop_held(self) -> None:
        """Hand what is held over to the user: a clean stop, or another engine (L13)."""
        held = [k for k, e in self._entries.items() if e.kind == "held"]
        for key in held:
            del self._entries[key]
        if held:
            self._write()

    def settle(self, key: str) -> None:
        """Its outcome is known: forget it."""
        self._in_flight.discard(key)
        if self._entries.pop(key, None) is not None:
            self._write()

    def release(self, key: str) -> None:
        """No task waits on it any more, but the server may still hold what it started."""
        self._in_flight.discard(key)

    def abandon(self, key: str) -> None:
        """The load outlasted `load_timeout`; the server may finish it until its deadline."""
        self._in_flight.discard(key)

    # --- what the server shows ------------------------------------------------

    def pending_load(self, model: str) -> tuple[str, Entry] | None:
        """A load of `model` nobody waits on that may still land: wait for it, do not load."""
        now = self._wall()
        for key, entry in self._entries.items():
            if (
                entry.kind == "load"
                and entry.model == model
                and key not in self._in_flight
                and entry.deadline > now
            ):
                return key, entry
        return None

    @property
    def awaiting_landing(self) -> bool:
        """A load nobody waits on may still land: only a listing will show it (L22, L29)."""
        now = self._wall()
        return any(
            entry.kind == "load" and key not in self._in_flight and entry.deadline > now
            for key, entry in self._entries.items()
        )

    def claim(self, key: str) -> None:
        """A load task waits on this entry: the reconcile leaves it alone meanwhile."""
        self._in_flight.add(key)

    def landed(self, key: str, listed: Sequence[str], owned: Collection[str]) -> str | None:
        """The instance load `key` made, if `listed` (the model's instances) shows one."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        for instance in listed:
            if instance not in entry.before and instance not in owned:
                return instance
        return None

    def ours(self, model: str, instance_id: str) -> str | None:
        """The key of an entry that makes `instance_id` ours, when one does."""
        for key, entry in self._entries.items():
            if key in self._in_flight or entry.model != model:
                continue
            if entry.kind != "load" and entry.instance_id == instance_id:
                return key
            if entry.kind == "load" and instance_id not in entry.before:
                return key
        return None

    def collect(
        self,
        loaded: Mapping[str, Sequence[str]],
        owned: Collection[str],
        loading: Collection[str] = (),
    ) -> list[tuple[str, str]]:
        """The (model, instance) pairs lmkeeperd started that nothing tracks, from a listing.

        Settles what the listing answers: an unloaded instance that is gone, a load whose
        instance appeared (reported here) or whose deadline passed. `owned` are the
        instances the core tracks (Lifecycle.owned_instances()); `loading` the models a
        load task is working on (listing, waiting or sent): their instances are left to that
        task, which reports an instance of ours as its own outcome. Reported here too, it
        would be adopted, the load superseded, and its outcome (that same instance) unloaded.
        """
        now = self._wall()
        strays: list[tuple[str, str]] = []
        settled: list[str] = []
        landed: dict[str, tuple[str, str]] = {}
        # While a load of a model is in flight, a new instance of it may be that load's,
        # listed before its answer came back: it is no stray.
        busy = {self._entries[k].model for k in self._in_flight if k.startswith("load:")}
        busy.update(loading)
        for key, entry in self._entries.items():
            if key in self._in_flight or entry.model in busy:
                continue
            listed = loaded.get(entry.model, ())
            if entry.kind != "load":
                if entry.instance_id not in listed:
                    settled.append(key)
                elif entry.instance_id not in owned:
                    assert entry.instance_id is not None
                    strays.append((entry.model, entry.instance_id))
                continue
            new = [i for i in listed if i not in entry.before]
            if new:
                settled.append(key)
                mine = [i for i in new if i not in owned]
                if mine and (entry.model, mine[0]) not in strays:
                    strays.append((entry.model, mine[0]))
                    landed[key] = (entry.model, mine[0])
            elif entry.deadline <= now:
                settled.append(key)
                log.info(
                    "journal_load_given_up",
                    model=entry.model,
                    started=entry.started,
                    waited_s=round(now - entry.started, 1),
                )
        for key in settled:
            del self._entries[key]
        for model, instance in landed.values():
            # Ours from now on: held until the core unloads it (or adopts and keeps it).
            now_entry = Entry("held", model, instance, (), now, now)
            self._entries[f"inst:{instance}"] = now_entry
        if settled:
            self._write()
        return strays

    # --- the file -------------------------------------------------------------

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            if not self._entries:
                self.path.unlink(missing_ok=True)
                return
            payload = {
                "version": _VERSION,
                "entries": {key: _jsonable(entry) for key, entry in self._entries.items()},
            }
            fileio.write_atomically(self.path, json.dumps(payload).encode("utf-8"))
        except OSError as e:
            log.warning("journal_write_failed", path=str(self.path), error=str(e))


def _jsonable(entry: Entry) -> dict[str, Any]:
    data = asdict(entry)
    data["before"] = list(entry.before)
    return data
