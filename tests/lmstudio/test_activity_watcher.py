"""`ActivityWatcher` against the emulator's real channel and real chat traffic.

L29: the watcher keeps the channel open and sends nothing unless asked (a look) or
waiting on a busy instance (`set_waiting`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from lmkeeperd.emulator import Emulator
from lmkeeperd.lmstudio.activity import (
    CLIENTS_ONLY,
    LMSTUDIO,
    ActivityWatcher,
    Availability,
    InstanceGone,
    InstanceLastUsed,
    InstanceState,
    Observation,
)
from lmkeeperd.lmstudio.channel import LMStudioChannel

LLM = "qwen/qwen2.5-0.5b-instruct"
T = TypeVar("T")


class Recorder:
    """The watcher's callback: keeps every observation, wakes whoever waits for one."""

    def __init__(self) -> None:
        self.seen: list[Observation] = []
        self._changed = asyncio.Event()

    def __call__(self, observation: Observation) -> None:
        self.seen.append(observation)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Observation], bool], since: int = 0
    ) -> Observation:
        """The first observation, from index `since` on, that `predicate` accepts."""
        async with asyncio.timeout(15):
            while True:
                for observation in self.seen[since:]:
                    if predicate(observation):
                        return observation
                self._changed.clear()
                await self._changed.wait()

    async def next_for(self, predicate: Callable[[Observation], bool]) -> Observation:
        """The first observation from now on that `predicate` accepts."""
        return await self.wait_for(predicate, since=len(self.seen))


def watcher(emu: Emulator, recorder: Recorder, token: str | None = None) -> ActivityWatcher:
    def factory() -> LMStudioChannel:
        return LMStudioChannel(base_url=emu.url, token=token, call_timeout=5, open_timeout=5)

    return ActivityWatcher(
        factory,
        recorder,
        state_interval=0.05,
        backoff_start=0.05,
        backoff_max=0.2,
    )


def run(make: Callable[[Recorder], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make(Recorder())

    return asyncio.run(main())


def available(source: str, reason: str | None = None) -> Callable[[Observation], bool]:
    def check(o: Observation) -> bool:
        return isinstance(o, Availability) and o.source == source and o.reason == reason

    return check


def state_of(busy: bool, status: str | None = None) -> Callable[[Observation], bool]:
    def check(o: Observation) -> bool:
        return (
            isinstance(o, InstanceState)
            and o.busy == busy
            and (status is None or o.status == status)
        )

    return check


def quiet(emu: Emulator, seconds: float) -> bool:
    """True when no channel frame arrives for `seconds` (many state intervals here)."""
    count = len(emu.frames())
    try:
        emu.wait_until(lambda: len(emu.frames()) > count, timeout=seconds)
    except TimeoutError:
        return True
    return False


async def stream(emu: Emulator, http: httpx.AsyncClient) -> None:
    body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with http.stream("POST", emu.url + "/v1/chat/completions", json=body) as answer:
        async for _ in answer.aiter_lines():
            pass


def calls(emu: Emulator) -> list[str]:
    """The RPC endpoints called on the channel so far (the auth frame names none)."""
    return [f.endpoint for f in emu.frames() if f.endpoint]


def probed(emu: Emulator) -> None:
    """Until the probe's call has reached the emulator."""
    emu.wait_until(lambda: len(calls(emu)) >= 1)


def test_L29_nothing_is_sent_unless_asked(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            # One probe on the new connection tells whether the state RPC is there...
            await recorder.wait_for(available(LMSTUDIO))
            await asyncio.to_thread(probed, emulator)
            assert w.connected
            # ...then nothing, however long, with an instance of ours loaded.
            assert await asyncio.to_thread(quiet, emulator, 1.5)
            assert calls(emulator) == ["getInstanceProcessingState"]
            state = await w.look(LLM)
            assert state is not None and not state.busy and state.status == "idle"
            assert len(calls(emulator)) == 2  # one look, one call
            upgrades = [r for r in emulator.requests() if r.path == "/llm"]
            assert len(upgrades) == 1  # one connection all along
        finally:
            await w.stop()

    run(main)


def test_L29_a_busy_instance_waited_on_is_looked_at_until_idle(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.set_stream(interval=0.2, chunks=10)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(available(LMSTUDIO))
            started_ms = time.time() * 1000
            async with httpx.AsyncClient(timeout=30) as http:
                task = asyncio.create_task(stream(emulator, http))
                await asyncio.to_thread(
                    emulator.wait_until,
                    lambda: emulator.processing_state(LLM).status == "generating",
                )
                busy = await w.look(LLM)
                assert busy is not None and busy.busy and busy.status == "generating"
                assert busy.queued == 1
                mark = len(recorder.seen)
                w.set_waiting({LLM})  # the daemon waits on it: looked at until idle
                await task
            await recorder.wait_for(state_of(False, "idle"), since=mark)
            w.set_waiting(())
            await asyncio.to_thread(quiet, emulator, 0.3)  # the last look's answer
            assert await asyncio.to_thread(quiet, emulator, 0.5), "no look once nobody waits"
            listed = await w.look_listed()
            assert listed is not None and [i.identifier for i in listed] == [LLM]
            used = await recorder.wait_for(lambda o: isinstance(o, InstanceLastUsed))
            assert isinstance(used, InstanceLastUsed) and used.identifier == LLM
            assert used.last_used_unix_ms >= started_ms - 1
            assert used.last_used <= time.monotonic()
            assert w.availability == Availability(LMSTUDIO)
        finally:
            await w.stop()

    run(main)


def test_a_managed_instance_unloaded_behind_is_reported_gone_once(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    def gone(o: Observation) -> bool:
        return isinstance(o, InstanceGone) and o.identifier == LLM

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(available(LMSTUDIO))
            assert await w.look(LLM) is not None
            emulator.unload_behind(LLM)
            assert await w.look(LLM) is None
            await recorder.wait_for(gone)
            await w.look_listed()
            assert await w.look(LLM) is None
            assert len([o for o in recorder.seen if gone(o)]) == 1  # once, not per look
            # Seen again, then gone again: a new disappearance, reported again.
            emulator.load_behind(LLM)
            assert await w.look_listed() is not None
            mark = len(recorder.seen)
            emulator.unload_behind(LLM)
            await w.look_listed()
            await recorder.wait_for(gone, since=mark)
        finally:
            await w.stop()

    run(main)


@pytest.mark.parametrize(
    ("switch", "reason"),
    [
        (lambda emu: emu.set_channel(False), "older server"),
        (lambda emu: emu.refuse_channel_auth(True), "auth refused"),
        (lambda emu: emu.set_channel_rpc_missing(True), "rpc missing"),
    ],
)
def test_unavailable_channel_is_reported(
    emulator: Emulator, switch: Callable[[Emulator], Any], reason: str
) -> None:
    switch(emulator)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.start()
        try:
            found = await recorder.wait_for(available(CLIENTS_ONLY, reason))
            assert isinstance(found, Availability) and found.detail
        finally:
            await w.stop()

    run(main)


def test_rpc_missing_still_reports_last_used(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.set_channel_rpc_missing(True)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(available(CLIENTS_ONLY, "rpc missing"))
            assert w.connected  # still the liveness signal
            assert await w.look(LLM) is None
            async with httpx.AsyncClient(timeout=30) as http:
                await stream(emulator, http)
            assert await w.look_listed() is not None
            await recorder.wait_for(lambda o: isinstance(o, InstanceLastUsed))
            assert not any(isinstance(o, InstanceState) for o in recorder.seen)
        finally:
            await w.stop()

    run(main)


def test_a_token_of_the_wrong_shape_is_auth_refused(emulator: Emulator) -> None:
    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder, token="not-an-lm-token")
        w.start()
        try:
            found = await recorder.wait_for(available(CLIENTS_ONLY, "auth refused"))
            assert isinstance(found, Availability)
            assert "$LM_API_TOKEN" in found.detail and "not-an-lm-token" not in found.detail
        finally:
            await w.stop()

    run(main)


def test_L29_a_closed_channel_is_noticed_and_reconnected_at_once(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(available(LMSTUDIO))
            emulator.go_down()
            await recorder.next_for(available(CLIENTS_ONLY, "unreachable"))
            assert not w.connected and await w.look(LLM) is None
            mark = len(recorder.seen)
            await asyncio.sleep(0.5)  # a few failed attempts, backing off
            back = time.monotonic()
            emulator.come_back(forget=False)
            await recorder.wait_for(available(LMSTUDIO), since=mark)
            assert time.monotonic() - back < 1.0  # backoff_max is 0.2 s here
            state = await w.look(LLM)
            assert state is not None and state.status == "idle"
        finally:
            await w.stop()

    run(main)


def test_a_failing_callback_does_not_stop_the_watcher(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main(recorder: Recorder) -> None:
        calls: list[Observation] = []

        def flaky(observation: Observation) -> None:
            calls.append(observation)
            if len(calls) == 1:
                raise RuntimeError("the caller's bug")
            recorder(observation)

        w = ActivityWatcher(
            lambda: LMStudioChannel(base_url=emulator.url), flaky, state_interval=0.05
        )
        w.set_managed({LLM})
        w.start()
        try:
            await until_connected(w)
            await w.look(LLM)  # the first report (availability) raised in the callback
            await recorder.wait_for(state_of(False, "idle"))
        finally:
            await w.stop()

    run(main)


async def until_connected(w: ActivityWatcher) -> None:
    async with asyncio.timeout(10):
        while not w.connected:  # noqa: ASYNC110 - the watcher has no event for it
            await asyncio.sleep(0.01)


def test_a_look_without_the_channel_cannot_say(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.set_channel(False)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(available(CLIENTS_ONLY, "older server"))
            assert await w.look(LLM) is None and await w.look_listed() is None
        finally:
            await w.stop()

    run(main)
