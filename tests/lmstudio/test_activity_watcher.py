"""`ActivityWatcher` against the emulator's real channel and real chat traffic."""

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
        list_interval=0.2,
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
    """True when no channel frame arrives for `seconds` (many poll periods here)."""
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


def test_nothing_managed_means_no_traffic(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.start()
        try:
            # One probe at start tells whether the channel is there...
            await recorder.wait_for(available(LMSTUDIO))
            await asyncio.to_thread(
                emulator.wait_until,
                lambda: all(r.t_done for r in emulator.requests() if r.path == "/llm"),
            )
            # ...then nothing, however long, while nothing of ours is loaded.
            assert await asyncio.to_thread(quiet, emulator, 1.5)
            upgrades = [r for r in emulator.requests() if r.path == "/llm"]
            assert len(upgrades) == 1
            w.set_managed({LLM})
            await recorder.wait_for(state_of(False, "idle"))
            endpoints = {f.endpoint for f in emulator.frames()}
            assert {"listLoaded", "getInstanceProcessingState"} <= endpoints
            w.set_managed(())
            await asyncio.to_thread(
                emulator.wait_until,
                lambda: all(r.t_done for r in emulator.requests() if r.path == "/llm"),
            )
            assert await asyncio.to_thread(quiet, emulator, 1.5)
        finally:
            await w.stop()

    run(main)


def test_a_direct_generation_is_busy_then_idle_with_last_used(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.set_stream(interval=0.2, chunks=10)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(state_of(False, "idle"))
            started_ms = time.time() * 1000
            async with httpx.AsyncClient(timeout=30) as http:
                task = asyncio.create_task(stream(emulator, http))
                busy = await recorder.next_for(state_of(True, "generating"))
                assert isinstance(busy, InstanceState) and busy.identifier == LLM
                assert busy.queued == 1
                again = await w.recheck(LLM)
                assert again is not None and again.busy and again.status == "generating"
                mark = recorder.seen.index(busy)
                await task
            await recorder.wait_for(state_of(False, "idle"), since=mark)
            used = await recorder.wait_for(lambda o: isinstance(o, InstanceLastUsed))
            assert isinstance(used, InstanceLastUsed) and used.identifier == LLM
            assert used.last_used_unix_ms >= started_ms - 1
            assert used.last_used <= time.monotonic()
            assert w.availability == Availability(LMSTUDIO)
        finally:
            await w.stop()

    run(main)


def listings(emulator: Emulator) -> int:
    return len([f for f in emulator.frames() if f.endpoint == "listLoaded"])


async def more_listings(emulator: Emulator, n: int) -> None:
    """Until the watcher has called listLoaded `n` more times."""
    listed = listings(emulator)
    async with asyncio.timeout(10):
        # Frames do not wake emulator.wait_until: polled, with a deadline.
        while listings(emulator) < listed + n:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_a_managed_instance_unloaded_behind_is_reported_gone_once(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    def gone(o: Observation) -> bool:
        return isinstance(o, InstanceGone) and o.identifier == LLM

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(state_of(False, "idle"))
            assert not any(gone(o) for o in recorder.seen)
            emulator.unload_behind(LLM)
            await recorder.wait_for(gone)
            await more_listings(emulator, 3)
            assert len([o for o in recorder.seen if gone(o)]) == 1  # once, not per listing
            # Listed again, then gone again: a new disappearance, reported again.
            emulator.load_behind(LLM)
            await more_listings(emulator, 3)
            mark = len(recorder.seen)
            emulator.unload_behind(LLM)
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
            async with httpx.AsyncClient(timeout=30) as http:
                await stream(emulator, http)
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


def test_reconnects_after_the_server_goes_down_and_up(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.set_managed({LLM})
        w.start()
        try:
            await recorder.wait_for(state_of(False, "idle"))
            emulator.go_down()
            await recorder.next_for(available(CLIENTS_ONLY, "unreachable"))
            mark = len(recorder.seen)
            emulator.come_back(forget=False)
            await recorder.wait_for(available(LMSTUDIO), since=mark)
            # The busy/idle picture is reported afresh on the new connection.
            await recorder.wait_for(state_of(False, "idle"), since=mark)
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
            await recorder.wait_for(state_of(False, "idle"))
        finally:
            await w.stop()

    run(main)


def test_recheck_without_a_connection_cannot_say(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main(recorder: Recorder) -> None:
        w = watcher(emulator, recorder)
        w.start()
        try:
            await recorder.wait_for(available(LMSTUDIO))
            assert await w.recheck(LLM) is None  # nothing managed: no connection
        finally:
            await w.stop()

    run(main)
