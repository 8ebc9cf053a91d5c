"""The daemon idle with a model loaded, default config, for 120 s.

Targets: CPU ≤ 2 s per hour (extrapolated from the window), RSS ≤ 45 MiB; the number of
wake-ups per minute is printed as well. Wake-ups are the process's context switches
(voluntary plus involuntary, all threads) over the window: each is one time the process
went to sleep or was put to sleep, which is what keeps a laptop's CPU out of its deep idle
states. The config sets nothing but the server URL and the socket, so the reconcile runs
every 15 s and the idle timer is 30 minutes, as for a user who never edited it.

    .venv/bin/python bench/bench_idle.py [--quick]     (--quick: a 30 s window)
"""

from __future__ import annotations

import argparse
import time

import psutil
from _harness import MODELS, Figure, emit, running

WINDOW_S = 120.0
SETTLE_S = 5.0
CPU_TARGET_S_PER_H = 2.0
RSS_TARGET_MIB = 45.0


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _switches(proc: psutil.Process) -> int:
    ctx = proc.num_ctx_switches()
    return int(ctx.voluntary + ctx.involuntary)


def run(quick: bool = False) -> list[Figure]:
    window = 30.0 if quick else WINDOW_S
    with running() as (emulator, daemon):
        daemon.request({"op": "select", "model": MODELS[0]})
        daemon.wait_status(state="loaded", model=MODELS[0], timeout=30)
        assert daemon.proc is not None
        proc = psutil.Process(daemon.proc.pid)
        time.sleep(SETTLE_S)  # let the load's after-effects (log, advisory thread) pass
        started = time.monotonic()
        cpu0, switches0 = _cpu(proc), _switches(proc)
        time.sleep(window)
        elapsed = time.monotonic() - started
        cpu = _cpu(proc) - cpu0
        switches = _switches(proc) - switches0
        rss_mib = proc.memory_info().rss / 2**20
        threads = proc.num_threads()
        reconciles = sum(
            1
            for r in emulator.requests(since=started)
            if r["method"] == "GET" and r["path"] == "/api/v1/models"
        )
        status = daemon.status()
    per_hour = cpu * 3600 / elapsed
    note = f"{cpu * 1000:.0f} ms CPU in a {elapsed:.0f} s window"
    return [
        emit(
            Figure(
                "idle",
                "CPU per hour, idle with a model loaded",
                f"{per_hour:.2f} s/h",
                "≤ 2 s/h",
                per_hour <= CPU_TARGET_S_PER_H,
                note,
            )
        ),
        emit(
            Figure(
                "idle",
                "RSS, idle with a model loaded",
                f"{rss_mib:.1f} MiB",
                "≤ 45 MiB",
                rss_mib <= RSS_TARGET_MIB,
                f"{threads} threads; state {status['state']}",
            )
        ),
        emit(
            Figure(
                "idle",
                "wake-ups (context switches) per minute",
                f"{switches * 60 / elapsed:.1f}/min",
                note=f"{switches} in {elapsed:.0f} s; {reconciles} reconciles (GET /api/v1/models)",
            )
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
