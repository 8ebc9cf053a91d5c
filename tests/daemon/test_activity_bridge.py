"""L20 in process: the look before an unload, made deterministic.

The daemon's roles run in this process (inprocess_harness.py) against the real
emulator and its real channel. The watcher never polls (L29): a generation that
starts while the model is loaded is known to lmkeeperd only through a look; here,
L20's look right before the idle eject's unload.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import structlog
from daemon_harness import unloads_of
from inprocess_harness import config_for, inprocess_daemon, load, run, until

from lmkeeperd.core import State, Tick
from lmkeeperd.daemon import Daemon
from lmkeeperd.emulator import Emulator

A = "qwen/qwen3-4b-2507"


def generating_on(emulator: Emulator) -> bool:
    return emulator.processing_state(A).status == "generating"


async def with_bridge(d: Daemon) -> None:
    d.activity.start()
    await until(lambda: d.activity.availability is not None, "the channel probed")


async def generate(url: str) -> None:
    body = {"model": A, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        httpx.AsyncClient(timeout=30, trust_env=False) as http,
        http.stream("POST", url + "/v1/chat/completions", json=body) as answer,
    ):
        async for _ in answer.aiter_lines():
            pass


async def idle_eject_now(d: Daemon) -> None:
    """Let the idle timer fall due, then tick as the driver loop would."""
    due = d.core.next_deadline()
    assert due is not None and d.core.state is State.LOADED
    await until(lambda: time.monotonic() >= due, "the idle deadline")
    d.feed(Tick())


@pytest.mark.parametrize("generating", [True, False])
def test_L20_look_before_idle_eject(emulator: Emulator, tmp_path: Path, generating: bool) -> None:
    async def main() -> None:
        config = config_for(emulator, idle_timeout=0.5)
        async with inprocess_daemon(emulator, tmp_path, config) as d:
            await with_bridge(d)
            assert d.activity.available
            await load(d, A)
            emulator.set_stream(0.05, 50)  # 2.5 s: past the idle deadline and the look
            task = asyncio.create_task(generate(emulator.url)) if generating else None
            if generating:
                await until(lambda: generating_on(emulator), "the generation")
            with structlog.testing.capture_logs() as logs:
                await idle_eject_now(d)
                if generating:
                    await until(lambda: d.core.state is State.STREAMING, "the deferral")
                    assert unloads_of(emulator) == []
                    assert (d.core.server_busy or "").startswith("generating")
                    deferred = [e for e in logs if e["event"] == "unload_deferred"]
                    assert deferred and deferred[0]["reason"] == "idle"
                else:
                    await until(lambda: unloads_of(emulator) == [A], "the idle eject")
            if task is not None:
                await task

    run(main())


def test_L20_without_the_channel_the_unload_goes_ahead(emulator: Emulator, tmp_path: Path) -> None:
    emulator.set_channel(False)

    async def main() -> None:
        config = config_for(emulator, idle_timeout=0.5)
        async with inprocess_daemon(emulator, tmp_path, config) as d:
            await with_bridge(d)
            assert not d.activity.available and d.activity.reason == "older server"
            await load(d, A)
            emulator.set_stream(0.05, 50)  # 2.5 s: past the idle deadline and the look
            task = asyncio.create_task(generate(emulator.url))
            await until(lambda: generating_on(emulator), "the generation")
            with structlog.testing.capture_logs() as logs:
                await idle_eject_now(d)
                await until(lambda: unloads_of(emulator) == [A], "the idle eject (clients only)")
            skipped = [e for e in logs if e["event"] == "unload_look_skipped"]
            assert skipped and skipped[0]["why"] == "clients only"
            await task

    run(main())


def test_another_server_gets_a_new_watcher_that_probes_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A reload naming another server: the old watcher stops, a new one reports on the new."""
    from dataclasses import replace

    with Emulator() as other:
        other.set_channel(False)

        async def main() -> None:
            config = config_for(emulator)
            async with inprocess_daemon(emulator, tmp_path, config) as d:
                d.activity.start()
                await until(lambda: d.activity.available, "the first server's channel")
                moved = replace(config, server=replace(config.server, url=other.url))
                d.activity.configure(config, moved)
                await until(lambda: d.activity.reason == "older server", "the new server's probe")
                assert d.core.activity_source == "clients only"

        run(main())
