"""Budgets and example counts shared by the fuzz tests (tests/test_fuzz_*.py).

The hypothesis profile is chosen in conftest.py from $HYPOTHESIS_PROFILE: "ci" by default,
"bench" (10,000 examples) when bench/run_all.py runs the fuzz tests. The fuzz tests run their
examples in an inner function, so they count the examples themselves and, when
$LMKEEPERD_FUZZ_REPORT names a file, append `{"test": ..., "examples": N}` to it for the
benchmark report.
"""

from __future__ import annotations

import json
import os

from hypothesis import settings

BENCH = os.environ.get("HYPOTHESIS_PROFILE") == "bench"


def budget(ci: int) -> int:
    """`ci` examples normally; the loaded profile's count under the bench profile."""
    default = settings.default
    return default.max_examples if BENCH and default is not None else ci


def report(test: str, examples: int) -> None:
    path = os.environ.get("LMKEEPERD_FUZZ_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": test, "examples": examples}) + "\n")
