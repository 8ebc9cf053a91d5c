"""The one lock of the emulated LM Studio, and how its requests wait and get interrupted.

Theory of operation
-------------------
One `threading.Condition` guards everything in `EmulatorState` (state.py), which
builds on `Guarded`. Anything that takes time (a load delay, a hung unload, the
pause between streamed chunks) waits on that condition, which releases the lock,
so other requests proceed meanwhile; every change notifies it, so waiters
re-check their reason to wait at once. That is what makes fault controls
"effective immediately": lowering a load delay releases loads already waiting
on it, turning hang_unloads off releases hung unloads.

A server that goes down (or stops) loses whatever it was doing. `interrupt()`
bumps the *generation*; each request remembers the generation it started in,
and a wait or a commit in an older generation raises `Interrupted` instead of
touching the state, so a load begun before a restart never lands after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lmkeeperd.emulator.errors import Interrupted


class Guarded:
    """The condition, the change counter `wait_until` watches, and the generation."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False
        self._changes = 0

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def interrupt(self) -> None:
        """The server went down: every request in flight is abandoned."""
        with self._cond:
            self._generation += 1
            self._changed()

    def close(self) -> None:
        """The emulator stopped: nothing waits any more."""
        with self._cond:
            self._closed = True
            self._generation += 1
            self._changed()

    def touch(self) -> None:
        """Something outside this object changed (the server went up or down): wake waiters."""
        with self._cond:
            self._changed()

    def wait(self, seconds: float, generation: int) -> None:
        """Sleep `seconds`, or raise Interrupted as soon as the server goes down."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while True:
                self._check(generation)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Block until `predicate()` holds; it runs without the lock, after each change."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._changes
            if predicate():
                return
            with self._cond:
                while self._changes == seen:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"condition not met within {timeout} s")
                    self._cond.wait(remaining)

    # -- call with the lock held ---------------------------------------------------

    def _changed(self) -> None:
        self._changes += 1
        self._cond.notify_all()

    def _check(self, generation: int) -> None:
        if self._closed or generation != self._generation:
            raise Interrupted
