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

The world calls `changed()` after every event the core handles, once that
event's actions are all performed; the gate re-checks the target then. Its own
calls into the world (selecting, opening streams) come back into `changed()`
and are folded into the running pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Protocol

import structlog

from lmkeeperd.proxy.hooks import SelectionError

log = structlog.get_logger()


class Verdict(enum.Enum):
    READY = "ready"  # loaded by lmkeeperd: requests for it may go
    PASS = "pass"  # not lmkeeperd's to switch to: forward as is
    SWITCH = "switch"  # select it and wait until it is loaded


class SwitchWorld(Protocol):
    """The daemon, as the gate sees it."""

    def verdict(self, model: str) -> Verdict: ...

    def selected_model(self) -> str | None:
        """The core's latest selection (to notice one made elsewhere)."""
        ...

    def select_model(self, model: str) -> None: ...

    def stream_opened(self) -> int: ...

    def stream_closed(self, stream: int) -> None: ...


class SwitchGate:
    """See the module docstring."""

    def __init__(self, world: SwitchWorld) -> None:
        self._world = world
        self._target: str | None = None
        self._failure: str | None = None
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._running = False
        self._again = False
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
            return self._world.stream_opened()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(model, []).append(waiter)
        self._advance()
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

    def changed(self) -> None:
        """The core handled an event: the target may be loaded now."""
        if self._target is not None or self._waiting:
            self._advance()

    def load_failed(self, model: str, error: str) -> None:
        """The load of `model` failed; acted on at the next `changed()`.

        Not at once: this is called while the daemon is still performing the
        actions of one event, and selecting the next model now would feed the
        core from inside that (its later events would be announced out of order).
        """
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
        self._advance()

    def _advance(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._step()
        finally:
            self._running = False

    def _step(self) -> None:
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
                return
            self._again = True
            return
        for model in list(self._waiting):
            if world.verdict(model) is not Verdict.SWITCH:
                self._release(model)
                continue
            self._target = model
            self._failure = None
            self.selections += 1
            log.info("proxy_switch", model=model, waiting=len(self._waiting[model]))
            world.select_model(model)
            self._again = True
            return

    def _release(self, model: str) -> None:
        for waiter in self._waiting.pop(model, []):
            if not waiter.done():
                waiter.set_result(self._world.stream_opened())

    def _reject(self, model: str, message: str) -> None:
        for waiter in self._waiting.pop(model, []):
            if not waiter.done():
                waiter.set_exception(SelectionError(message, status=503))
