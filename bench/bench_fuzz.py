"""The fuzz tests at full size: HYPOTHESIS_PROFILE=bench, 10,000 examples per input kind.

Runs tests/control/test_fuzz_socket.py, tests/config/test_fuzz_config.py and
tests/lmstudio/test_fuzz_client.py with pytest under the "bench" hypothesis profile
(registered in tests/conftest.py) and reports how many examples each test ran (the tests
count them; see tests/fuzzing.py) and whether it passed.
With --quick the CI budgets are used instead.

    .venv/bin/python bench/bench_fuzz.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import PYTHON, ROOT, Figure, child_env, emit

FILES = (
    "tests/control/test_fuzz_socket.py",
    "tests/config/test_fuzz_config.py",
    "tests/lmstudio/test_fuzz_client.py",
)
TARGET = 10_000
# The tests whose count is the "10,000 of each input" of the issue; the others (live config
# edits, huge and TCP answers) wait on watchers or timeouts and run hundreds.
HEADLINE = (
    "socket: random frames to the live daemon",
    "socket: rapid connects and disconnects",
    "config: any text",
    "config: TOML from loose fragments (types, durations, unicode)",
    "config: files of any bytes",
    "client: random, mutated, truncated answers (MockTransport)",
)

LAST: list[dict[str, Any]] = []


def run(quick: bool = False) -> list[Figure]:
    with tempfile.TemporaryDirectory() as folder:
        counts = Path(folder) / "counts.jsonl"
        extra = {"LMKEEPERD_FUZZ_REPORT": str(counts)}
        if not quick:
            extra["HYPOTHESIS_PROFILE"] = "bench"
        started = time.monotonic()
        outcome = subprocess.run(
            [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=7200",
             "--durations=0", *FILES],
            cwd=ROOT,
            env=child_env(extra),
            capture_output=True,
            text=True,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        rows = (
            [json.loads(line) for line in counts.read_text().splitlines()]
            if counts.exists()
            else []
        )
    LAST.clear()
    LAST.extend(rows)
    passed = outcome.returncode == 0
    tail = outcome.stdout.strip().splitlines()[-1] if outcome.stdout.strip() else ""
    figures = [
        emit(
            Figure(
                "fuzz",
                "fuzz tests (pytest " + " ".join(Path(f).name for f in FILES) + ")",
                tail or f"exit status {outcome.returncode}",
                "all pass",
                passed,
                f"{elapsed:.0f} s, profile {'ci' if quick else 'bench'}",
            )
        )
    ]
    if not passed:
        print(outcome.stdout[-5000:], outcome.stderr[-2000:])
    for row in rows:
        headline = row["test"] in HEADLINE and not quick
        figures.append(
            emit(
                Figure(
                    "fuzz",
                    f"examples: {row['test']}",
                    f"{row['examples']:,}",
                    "≥ 10,000" if headline else "",
                    (row["examples"] >= TARGET) if headline else None,
                )
            )
        )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
