"""Select-on-request's gate (lmkeeperd/proxy/switching.py) against a fake daemon.

The world here is a few lines standing in for the daemon's verdicts and the
core's loading; the gate's ordering, releasing and rejecting is what is tested.
Like the daemon, the world does the work the gate returns after each event
(`after_event`): the gate itself never calls back into it while deciding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from lmkeeperd.proxy import OpenStreams, SelectionError, SelectModel, SwitchGate, Verdict

T = TypeVar("T")
LONG = 30.0


class World:
    def __init__(self, loaded: str | None = None) -> None:
        self.loaded = loaded
        self.selected: str | None = loaded
        self.known = {"A", "B", "C", "embed"}
        self.passing = {"embed"}
        self.selections: list[str] = []
        self.streams: set[int] = set()
        self.opened = 0
        self.gate = SwitchGate(self)

    # SwitchWorld
    def verdict(self, model: str) -> Verdict:
        if model not in self.known or model in self.passing:
            return Verdict.PASS
        return Verdict.READY if model == self.loaded else Verdict.SWITCH

    def selected_model(self) -> str | None:
        return self.selected

    def stream_opened(self, model: str | None = None) -> int:
        stream = self._open()
        self.after_event()
        return stream

    def stream_closed(self, stream: int) -> None:
        self.streams.remove(stream)
        self.after_event()

    def gate_moved(self) -> None:
        self.after_event()

    # what the daemon's driver does after each event
    def after_event(self) -> None:
        while work := self.gate.changed():
            for item in work:
                match item:
                    case SelectModel(model=model):
                        self.selected = model
                        self.selections.append(model)
                    case OpenStreams(waiters=waiters):
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_result(self._open())

    def _open(self) -> int:
        self.opened += 1
        self.streams.add(self.opened)
        return self.opened

    # what the core would do
    def load(self, model: str) -> None:
        self.loaded = model
        self.after_event()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 10))


async def settle() -> None:
    """Let every task that can run, run (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_loaded_model_goes_at_once_without_a_selection() -> None:
    async def main() -> None:
        world = World(loaded="A")
        stream = await world.gate.stream_for("A", max_wait=LONG)
        assert world.streams == {stream} and world.selections == []

    run(main())


def test_models_not_ours_to_switch_go_at_once_even_during_a_switch() -> None:
    async def main() -> None:
        world = World(loaded="A")
        waiting = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        assert world.gate.target == "B"
        for model in ("embed", "not-on-the-server"):
            await world.gate.stream_for(model, max_wait=LONG)
        assert world.selections == ["B"] and not waiting.done()
        waiting.cancel()

    run(main())


def test_waiters_for_one_model_share_one_switch_and_all_go_in_the_same_step() -> None:
    async def main() -> None:
        world = World(loaded="A")
        tasks = [asyncio.create_task(world.gate.stream_for("B", max_wait=LONG)) for _ in range(3)]
        await settle()
        assert world.selections == ["B"] and world.streams == set()
        assert world.gate.waiting == 3
        world.load("B")
        # Streams exist before any waiter ran again: nothing can unload B in between.
        assert len(world.streams) == 3
        assert sorted(await asyncio.gather(*tasks)) == sorted(world.streams)

    run(main())


def test_requests_for_the_current_model_queue_behind_a_switch() -> None:
    async def main() -> None:
        world = World(loaded="A")
        to_b = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        to_a = asyncio.create_task(world.gate.stream_for("A", max_wait=LONG))
        await settle()
        assert not to_a.done()  # else a busy client on A would hold the switch off forever
        world.load("B")
        b_stream = await to_b
        assert world.selections == ["B", "A"] and not to_a.done()
        world.stream_closed(b_stream)
        world.load("A")
        await to_a
        assert world.selections == ["B", "A"]

    run(main())


def test_a_failed_load_rejects_its_waiters_and_a_new_request_selects_again() -> None:
    async def main() -> None:
        world = World(loaded="A")
        waiting = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        world.gate.load_failed("B", "out of memory")
        assert world.gate.target == "B"  # acted on once the event is handled:
        world.after_event()
        with pytest.raises(SelectionError) as caught:
            await waiting
        assert caught.value.status == 503 and "out of memory" in str(caught.value)
        assert world.gate.target is None and world.streams == set()
        again = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        assert world.selections == ["B", "B"]
        again.cancel()

    run(main())


def test_a_selection_made_elsewhere_overrides_the_switch() -> None:
    async def main() -> None:
        world = World(loaded="A")
        waiting = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        world.selected = "C"  # the control socket or the config selected C
        world.after_event()
        with pytest.raises(SelectionError) as caught:
            await waiting
        assert caught.value.status == 503 and "C" in str(caught.value)

    run(main())


def test_a_waiter_that_times_out_gets_504_and_leaves_nothing_behind() -> None:
    async def main() -> None:
        world = World(loaded="A")
        with pytest.raises(SelectionError) as caught:
            await world.gate.stream_for("B", max_wait=0.01)
        assert caught.value.status == 504
        assert world.gate.waiting == 0 and world.gate.target is None
        world.load("B")
        assert world.streams == set()

    run(main())


def test_a_waiter_cancelled_in_the_step_it_was_released_closes_its_stream() -> None:
    async def main() -> None:
        world = World(loaded="A")
        waiting = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        world.load("B")  # opens its stream...
        assert len(world.streams) == 1
        waiting.cancel()  # ...and its client leaves before it ran again
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert world.streams == set()

    run(main())


def test_a_cancelled_waiter_gets_no_stream_later() -> None:
    async def main() -> None:
        world = World(loaded="A")
        waiting = asyncio.create_task(world.gate.stream_for("B", max_wait=LONG))
        await settle()
        waiting.cancel()
        await settle()
        world.load("B")
        assert world.streams == set() and world.gate.waiting == 0

    run(main())
