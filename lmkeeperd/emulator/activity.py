"""What each loaded instance is doing, driven by the emulator's real inference traffic.

LM Studio's `getInstanceProcessingState` reports, per instance, the phase of the
request it is working on (`processingPrompt`, `generating`, `computingEmbedding`)
and how many requests are queued *including that one*; `listLoaded` reports
`lastUsedTime`. This module keeps exactly that, fed by the chat, completion and
embedding handlers through one context manager around each request:

    with activity.serving(name, "completion") as served:
        ...               # processingPrompt while the prompt is "read"
        served.generating()
        ...               # generating while chunks flow
    # on exit: the request leaves the queue, lastUsedTime = now (unix ms)

The oldest request in flight on an instance is its "current" one and gives the
status. `lastUsedTime` moves when a request ends (LM Studio does not document
whether it moves at start or end; see docs/emulator.md). Instance references are
kept here too, keyed by the instance id, and dropped when the id is no longer
loaded, so an instance loaded again under the same id gets a new reference.

Own lock, never held while calling out; `on_change` (the emulator state's
`touch`) runs after each change so that `Emulator.wait_until` sees it.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

IDLE = "idle"
PROCESSING_PROMPT = "processingPrompt"
GENERATING = "generating"
COMPUTING_EMBEDDING = "computingEmbedding"


@dataclass(frozen=True, slots=True)
class ProcessingState:
    """One instance's `getInstanceProcessingState` answer."""

    status: str
    queued: int


class ServedRequest:
    """One request in flight on one instance."""

    __slots__ = ("_tracker", "instance_id", "phase", "seq")

    def __init__(self, tracker: ActivityTracker, instance_id: str, phase: str, seq: int) -> None:
        self._tracker = tracker
        self.instance_id = instance_id
        self.phase = phase
        self.seq = seq

    def generating(self) -> None:
        """The prompt is read; tokens flow now."""
        self._tracker._set_phase(self, GENERATING)


class ActivityTracker:
    """Per-instance processing state, lastUsedTime and instanceReference."""

    def __init__(
        self,
        on_change: Callable[[], None] = lambda: None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        self._wall_ms = wall_ms
        self._seq = itertools.count()
        self._in_flight: dict[str, list[ServedRequest]] = {}
        self._last_used: dict[str, int] = {}
        self._references: dict[str, str] = {}

    @contextmanager
    def serving(self, instance_id: str, kind: str) -> Iterator[ServedRequest]:
        """Mark `instance_id` busy with one request of `kind` ("completion"|"embedding")."""
        phase = COMPUTING_EMBEDDING if kind == "embedding" else PROCESSING_PROMPT
        with self._lock:
            served = ServedRequest(self, instance_id, phase, next(self._seq))
            self._in_flight.setdefault(instance_id, []).append(served)
        self._on_change()
        try:
            yield served
        finally:
            with self._lock:
                queue = self._in_flight.get(instance_id, [])
                if served in queue:
                    queue.remove(served)
                if not queue:
                    self._in_flight.pop(instance_id, None)
                self._last_used[instance_id] = self._wall_ms()
            self._on_change()

    def _set_phase(self, served: ServedRequest, phase: str) -> None:
        with self._lock:
            if served.phase == phase:
                return
            served.phase = phase
        self._on_change()

    def state(self, instance_id: str) -> ProcessingState:
        with self._lock:
            queue = self._in_flight.get(instance_id)
            if not queue:
                return ProcessingState(IDLE, 0)
            current = min(queue, key=lambda s: s.seq)
            return ProcessingState(current.phase, len(queue))

    def last_used(self, instance_id: str) -> int | None:
        """Unix ms of the last request's end; None while one is in flight (LM Studio's null)."""
        with self._lock:
            if self._in_flight.get(instance_id):
                return None
            return self._last_used.get(instance_id)

    def reference(self, instance_id: str) -> str:
        """The instance's opaque, stable reference (made on first sight)."""
        with self._lock:
            found = self._references.get(instance_id)
            if found is None:
                found = self._references[instance_id] = uuid.uuid4().hex
            return found

    def prune(self, loaded: Collection[str]) -> None:
        """Forget instances no longer loaded: a reload under the same id is a new instance."""
        with self._lock:
            for table in (self._references, self._last_used):
                for instance_id in [i for i in table if i not in loaded]:
                    del table[instance_id]
