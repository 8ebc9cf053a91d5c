"""Idle eject fires after `idle_timeout` (target: p99 late by ≤ 50 ms).

Each trial selects a model, waits until it is loaded, then sends `activity` (which restarts
the idle timer) and notes when it was sent. Lateness is the unload request's arrival at the
server minus (that moment + `idle_timeout`). The timer starts when the daemon handles the
activity, a little after it was sent, so the figure can only overstate the lateness.
`idle_timeout` is 500 ms; `switch_debounce` is 0.

    .venv/bin/python bench/bench_idle_eject.py [--quick]     (--quick: 20 trials)
"""

from __future__ import annotations

import argparse
import time

from _harness import MODELS, UNLOAD, Figure, emit, ms, percentile, running

from lmkeeperd.control.client import ControlClient

IDLE_S = 0.5
TARGET_S = 0.050


def run(quick: bool = False) -> list[Figure]:
    n = 20 if quick else 100
    late: list[float] = []
    early = 0
    tables = {"idle_timeout": f"{IDLE_S * 1000:g}ms", "switch_debounce": "0ms"}
    with (
        running(model=tables) as (emulator, daemon),
        ControlClient(daemon.socket, timeout=30) as client,
    ):
        for i in range(n + 2):  # two warm-up trials
            model = MODELS[i % 2]
            client.request({"op": "select", "model": model})
            daemon.wait_status(state="loaded", model=model, timeout=30)
            sent = time.monotonic()
            client.request({"op": "activity"})
            unload = emulator.wait_request(UNLOAD, after=sent, timeout=30)
            daemon.wait_status(state="idle", timeout=30)
            lateness = unload["t"] - sent - IDLE_S
            if i >= 2:
                late.append(lateness)
                early += lateness < 0
    p99 = percentile(late, 99)
    return [
        emit(
            Figure(
                "idle_eject",
                f"idle eject lateness after idle_timeout {IDLE_S * 1000:g} ms, p99",
                ms(p99),
                "≤ 50 ms",
                p99 <= TARGET_S and early == 0,
                f"{n} trials; p50 {ms(percentile(late, 50))}, max {ms(max(late))}"
                + (f"; {early} EARLY ejects" if early else ""),
            )
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
