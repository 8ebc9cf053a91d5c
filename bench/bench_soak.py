"""The chaos soak at full size: 20,000 seeded random events against the real daemon.

The same code as the CI soak (tests/daemon/test_e2e_soak.py, about 1,000 events), with
twenty times the events; its module docstring defines the invariants. The emulator runs in
this process (the soak drives its faults through the Python API); the daemon is its own
process.

    .venv/bin/python bench/bench_soak.py [--quick] [--events N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from _harness import Figure, child_env, emit
from test_e2e_soak import DEFAULT_SEED, SoakPlan, SoakResult, run_soak

FAULTS = (
    "fault_load_delay",
    "fault_fail_loads",
    "fault_hang_unloads",
    "fault_restart",
    "load_behind",
    "unload_behind",
    "fault_load_timeout",
    "fault_crash",
)

LAST: dict[str, Any] = {}  # the last result's summary, for run_all's report


def run(quick: bool = False, events: int | None = None, seed: int = DEFAULT_SEED) -> list[Figure]:
    # The daemon inherits this process's environment: give it cached bytecode too.
    os.environ.update(child_env())
    n = events or (4000 if quick else 20000)
    result: SoakResult = run_soak(SoakPlan(events=n, seed=seed))
    summary = result.summary()
    LAST.clear()
    LAST.update(summary)
    faults = sum(result.events[name] for name in FAULTS)
    checks = result.checks
    return [
        emit(
            Figure(
                "soak",
                f"invariant violations over {n:,} events (seed {seed})",
                str(len(result.violations)),
                "0",
                not result.violations and result.exit_code == 0,
                f"{result.seconds:.0f} s; {faults} faults injected "
                f"({result.events['fault_crash']} kill -9 and restarts, "
                f"{result.events['fault_load_timeout']} load timeouts); "
                f"L22 held at {checks['L22 quiet points']} quiet points; "
                f"{checks['unload vs streams']} unloads checked against open streams "
                f"({checks['unload in flight before a stream (excused)']} in flight before one), "
                f"{checks['instance snapshots']} instance snapshots, "
                f"{checks['foreign unload']} foreign unloads checked; "
                f"final agreement {'reached' if checks['final agreement'] else 'NOT reached'}; "
                f"exit status {result.exit_code}"
                + (f"; first: {result.violations[0]}" if result.violations else ""),
            )
        ),
        emit(
            Figure(
                "soak",
                "daemon RSS, early in the run → end",
                f"{result.rss_start_mib:.1f} → {result.rss_end_mib:.1f} MiB "
                f"({result.rss_growth_mib:+.1f})",
                "flat",
                result.rss_growth_mib <= 5.0,
                "medians of the samples at 10-20 % of the events and after 90 %",
            )
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    run(args.quick, args.events, args.seed)
