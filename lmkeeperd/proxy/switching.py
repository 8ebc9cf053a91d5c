"""Select-on-request: which waiting request switches models, and when each may go.

Theory of operation
-------------------
A proxied request that names a model asks `SwitchGate.stream_for(model)`.
The daemon (`SwitchWorld`) gives a verdict for the model:

- READY: lmkeeperd has it loaded. With no switch under way the request gets
  its stream at once and goes.
- PASS: not lmkeeperd's to switch to (the server does not list it, it is an
  embedding model, lmkeeperd is hands-off or auto-load is off): the request
  gets its stream at once and goes, and LM Studio answers as it would.
- SWITCH: another model is loaded, or none, or this one is still loading:
  the request waits.

At most one switch is under way: the *target*. Waiting requests are grouped
by model, in order of arrival; when no target is set the oldest group's model
becomes the target and is selected (`SwitchWorld.select_model`, the same
selection a client makes on the control socket, debounce and lifecycle L7
included: the core unloads nothing while streams are open). Requests for
other models wait behind the target, those for the model loaded now
included: letting them through would keep streams open forever under a busy
client and the switch would never happen.

When the target's verdict turns READY, every request waiting for it gets its
stream in that same step (before anything else can select another model or
let the idle timer fire), and the next group's model becomes the target. A
failed load of the target (`load_failed`), or a selection of another model
made elsewhere (socket, config), rejects the target's waiters with a
`SelectionError` (503). A waiter that gives up (`max_wait`, or its client
left) just leaves its group.

The gate never feeds the core itself. `changed()` returns what it wants done
(`SelectModel`, `OpenStreams`); the daemon calls it after every event the core
handles, once that event's actions are all performed, does the work as events
of its own, and asks again until the gate wants nothing more. So events stay
in order and no call ever comes back into the gate while it decides. When a
waiter arrives or leaves outside any event, the gate asks the world to do the
same (`SwitchWorld.gate_moved`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

import structlog

from lmkeeperd.core.policy import Verdict
from lmkeeperd.proxy.hooks import SelectionError

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class SelectModel:
    """Select `model`, as a client on the control socket would."""

    model: str


@dataclass(frozen=True, slots=True)
class OpenStreams:
    """Open one stream per waiter still waiting, on `model`, and hand it its id (`set_result`)."""

    waiters: tuple[asyncio.Future[int], ...]
    model: str | None = None  # the model they asked for (L24: their streams count for it)


GateWork = SelectModel | OpenStreams


class SwitchWorld(Protocol):
    """The daemon, as the gate sees it."""

    def verdict(self, model: str) -> Verdict: ...

    def selected_model(self) -> str | None:
        """The core's latest selection (to notice one made elsewhere)."""
        ...

    def stream_opened(self, model: str | None = None) -> int:
        """Open a stream on `model` for a request that goes at once (never from `changed()`)."""
        ...

    def stream_closed(self, stream: int) -> None: ...

    def gate_moved(self) -> None:
        """A waiter came or went: call `changed()` and do the work it returns."""
        ...


class SwitchGate:
    """See the module docstring."""

    def __init__(self, world: SwitchWorld) -> None:
        self._world = world
        self._target: str | None = None
        self._failure: str | None = None
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._work: list[GateWork] = []
        self.selections = 0  # switches proxied requests asked for

    @property
    def target(self) -> str | None:
        return self._target

    @property
    def waiting(self) -> int:
        return sum(len(group) for group in self._waiting.values())

    async def stream_for(self, model: str, *, max_wait: float) -> int:
        verdict = self._world.verdict(model)
        if verdict is Verdict.PASS or (verdict is Verdict.READY and self._target is None):
            return self._world.stream_opened(model)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(model, []).append(waiter)
        self._world.gate_moved()
        try:
            async with asyncio.timeout(max_wait):
                return await waiter
        except TimeoutError:
            self._leave(model, waiter)
            raise SelectionError(
                f"lmkeeperd could not switch to {model} within {max_wait:g} s "
                "([server] load_timeout)",
                status=504,
            ) from None
        except BaseException:
            self._leave(model, waiter)
            raise

    def changed(self) -> list[GateWork]:
        """The core handled an event: the work the gate wants done now, in order.

        Empty when there is nothing to do. After a `SelectModel` the gate stops
        deciding until the selection is made: call `changed()` again then.
        """
        if self._target is None and not self._waiting:
            return []
        self._work = []
        while self._step():
            pass
        work, self._work = self._work, []
        return work

    def load_failed(self, model: str, error: str) -> None:
        """The load of `model` failed; acted on at the next `changed()`."""
        if model == self._target:
            self._failure = error

    # --- the pass ------------------------------------------------------------

    def _leave(self, model: str, waiter: asyncio.Future[int]) -> None:
        """A waiter gives up (time out, its client left, or it was rejected)."""
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled() and waiter.exception() is None:
            # Its stream was opened in the same step it gave up: nobody else will close it.
            self._world.stream_closed(waiter.result())
        group = self._waiting.get(model)
        if group is not None:
            with contextlib.suppress(ValueError):
                group.remove(waiter)
            if not group:
                del self._waiting[model]
        self._world.gate_moved()

    def _step(self) -> bool:
        """One decision; True when the gate should decide again at once."""
        world = self._world
        target = self._target
        if target is not None:
            if world.verdict(target) is not Verdict.SWITCH:
                self._target = None
                self._release(target)
            elif self._failure is not None:
                error, self._failure = self._failure, None
                self._target = None
                self._reject(target, f"lmkeeperd could not load {target}: {error}")
            elif world.selected_model() != target:
                self._target = None
                self._reject(
                    target,
                    f"the switch to {target} was overridden by a selection of "
                    f"{world.selected_model()} (control socket or config)",
                )
            elif not self._waiting.get(target):
                self._target = None  # everybody gave up; the core goes on with the selection
            else:
                return False
            return True
        for model in list(self._waiting):
            if world.verdict(model) is not Verdict.SWITCH:
                self._release(model)
                continue
            self._target = model
            self._failure = None
            self.selections += 1
            log.info("proxy_switch", model=model, waiting=len(self._waiting[model]))
            # The gate cannot judge the target again before this selection is made.
            self._work.append(SelectModel(model))
            return False
        return False

    def _release(self, model: str) -> None:
        # Their streams open in the same step the model is seen loaded, before
        # anything else (a selection, the idle timer) can unload it.
        waiters = tuple(self._waiting.pop(model, []))
        if waiters:
            self._work.append(OpenStreams(waiters, model))

    def _reject(self, model: str, message: str) -> None:
        for waiter in self._waiting.pop(model, []):
            if not waiter.done():
                waiter.set_exception(SelectionError(message, status=503))
