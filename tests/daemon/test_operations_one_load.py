"""L30 in operations.py: never two loads in flight, whatever the core asks.

The daemon's roles in this process against the real emulator (inprocess_harness.py).
The core never asks for a second load while one runs; these tests hand the operations
layer two loads directly, as a core with that bug would, and read the emulator's request
log: the second load request reaches LM Studio only after the first one's answer.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from inprocess_harness import inprocess_daemon, run, until

from lmkeeperd.core import StartLoad
from lmkeeperd.emulator import Emulator

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
LOAD = "/api/v1/models/load"


def test_L30_a_load_asked_for_while_one_is_in_flight_waits_for_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        emulator.set_load_delay(0.5)
        async with inprocess_daemon(emulator, tmp_path) as d:
            with structlog.testing.capture_logs() as logs:
                d.ops.start_load(StartLoad(9001, A))
                d.ops.start_load(StartLoad(9002, B))  # the bug: a second load at once
                await until(lambda: sorted(emulator.loaded()) == sorted([A, B]), "both loads", 15)
            loads = [r for r in emulator.requests() if r.path == LOAD]
            assert [r.body["model"] for r in loads] == [A, B]
            first, second = loads
            assert first.t_done is not None and second.t >= first.t_done
            (overlap,) = [e for e in logs if e["event"] == "load_overlap"]
            assert overlap["log_level"] == "error" and overlap["model"] == B
            assert overlap["in_flight"] == [A]

    run(main())


def test_L30_a_load_after_the_first_returned_goes_at_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            with structlog.testing.capture_logs() as logs:
                d.ops.start_load(StartLoad(9001, A))
                await until(lambda: A in emulator.loaded(), "the first load", 15)
                await until(lambda: not d.ops.requests_in_flight, "its task done", 5)
                d.ops.start_load(StartLoad(9002, B))
                await until(lambda: B in emulator.loaded(), "the second load", 15)
            assert not [e for e in logs if e["event"] == "load_overlap"]

    run(main())
