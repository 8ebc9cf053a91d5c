"""L12's last sentence in process: a failed memory check is logged, never blocks or delays.

The daemon's roles run in this process (inprocess_harness.py) against the real
emulator. The one change is the memory probe (the seam `MemoryCheck` takes): it
holds the check until the test lets it go, then fails as a probe that cannot read
the machine's memory would. Everything else (the estimate, the load, the core) is
the daemon's own.
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog
from daemon_harness import loads_of
from inprocess_harness import inprocess_daemon, run, until

from lmkeeperd.core import Select, State
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.emulator import Emulator
from lmkeeperd.memory import MemorySnapshot

A = "qwen/qwen3-4b-2507"


class StuckThenBrokenProbe:
    """A memory probe whose read waits for `release`, then fails with EIO."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self) -> MemorySnapshot:
        self.entered.set()
        self.release.wait(30)
        raise OSError(5, "Input/output error", "/proc/meminfo")


def test_L12_a_failed_memory_check_is_logged_and_never_blocks_or_delays_the_load(
    emulator: Emulator, tmp_path: Path
) -> None:
    probe = StuckThenBrokenProbe()

    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            d.ops.memory = MemoryCheck(d.config, probe=probe)
            try:
                with structlog.testing.capture_logs() as logs:
                    d.feed(Select(A))
                    # The check is under way and has not finished: the load lands anyway.
                    await until(probe.entered.is_set, "the memory check reading memory")
                    await until(
                        lambda: d.core.state is State.LOADED and d.core.model == A,
                        "the load while the check is still stuck",
                    )
                    assert not probe.release.is_set() and loads_of(emulator) == [A]
                    probe.release.set()
                    failed = await until(
                        lambda: [e for e in logs if e["event"] == "memory_check_failed"],
                        "memory_check_failed",
                    )
            finally:
                probe.release.set()  # never leave the check's thread waiting
            assert failed[0]["log_level"] == "error" and failed[0]["model"] == A
            assert "Input/output error" in failed[0]["error"]
            # The failure changed nothing: still loaded, no error, no advisory.
            assert d.core.state is State.LOADED and d.core.model == A
            assert d.core.last_error is None
            status = d.status()
            assert status["state"] == "loaded" and status["last_advisory"] is None
            assert emulator.loaded() == {A: [A]} and loads_of(emulator) == [A]

    run(main())
