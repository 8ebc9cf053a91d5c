"""The proxy bridge (lmkeeperd/daemon/proxy_bridge.py) in process: gate, driver, core, emulator.

Select-on-request end to end without sockets: the switch gate returns its work
and the driver feeds it after the event that caused it, never from inside a feed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import loads_of
from inprocess_harness import config_for, inprocess_daemon, load, run
from structlog.testing import capture_logs

from lmkeeperd.core import State, Verdict
from lmkeeperd.emulator import Emulator
from lmkeeperd.proxy import SelectionError

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
EMBED = "text-embedding-nomic-embed-text-v1.5"
DRIVER_EVENTS = {
    "proxy_switch", "unload_started", "unloaded", "load_started", "load_finished",
    "state_changed", "stream_opened",
}  # fmt: skip


def test_a_request_for_another_model_switches_then_gets_its_stream_in_order(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(
            emulator, tmp_path, config_for(emulator, switch="break-before-make")
        ) as d:
            await load(d, A)
            assert d.bridge.verdict(B) is Verdict.SWITCH and d.bridge.verdict(A) is Verdict.READY
            with capture_logs() as logs:
                stream = await d.bridge.stream_for(B, max_wait=30)
            assert d.core.model == B and d.core.state is State.STREAMING
            assert d.core.active_streams == 1 and loads_of(emulator) == [A, B]
            # The memory check logs from its own thread: keep the driver's events only.
            logs = [e for e in logs if e["event"] in DRIVER_EVENTS | {"lifecycle_error"}]
            names = [e["event"] for e in logs]
            assert "lifecycle_error" not in names  # feed() was never re-entered
            # The switch, then the core's work, then the stream, opened right at the load.
            switch, finished = names.index("proxy_switch"), names.index("load_finished")
            opened = [i for i, e in enumerate(logs) if e["event"] == "stream_opened"]
            assert switch < names.index("unload_started") < finished
            assert names[finished + 1 : finished + 3] == ["state_changed", "stream_opened"]
            assert opened == [finished + 2] and logs[opened[0]]["stream"] == stream
            d.bridge.stream_closed(stream)
            assert d.core.active_streams == 0

    run(main())


def test_models_the_daemon_does_not_switch_to_go_at_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            await load(d, A)
            for model in (EMBED, "not/on-the-server", A):
                stream = await d.bridge.stream_for(model, max_wait=30)
                assert d.core.model == A and d.core.active_streams == 1
                d.bridge.stream_closed(stream)
            assert loads_of(emulator) == [A]

    run(main())


def test_a_failed_switch_rejects_the_waiting_request(emulator: Emulator, tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            await load(d, A)
            emulator.fail_next_loads(1)
            with pytest.raises(SelectionError) as caught:
                await d.bridge.stream_for(B, max_wait=30)
            assert caught.value.status == 503 and B in str(caught.value)
            assert d.core.active_streams == 0

    run(main())


def test_metrics_and_proxy_status_without_listeners(emulator: Emulator, tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            await load(d, A)
            text = d.bridge.metrics_text()
            # Counted from the announced events (Daemon.announce -> ProxyBridge.observe).
            assert 'lmkeeperd_loads_total{kind="main",adopted="false"} 1' in text
            assert d.bridge.proxy_status() is None and d.bridge.metrics_status() is None

    run(main())
