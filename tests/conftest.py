"""Fixtures shared by the end-to-end tests: the emulator and the daemon process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProc
from hypothesis import HealthCheck, Phase, settings

from lmkeeperd.emulator import Emulator

# Child Pythons (the daemon, the CLI, `python -c` helpers) read cached bytecode, as an
# installed lmkeeperd does. Under PYTHONDONTWRITEBYTECODE (set by many development shells)
# each of the suite's hundreds of daemon and CLI starts would compile lmkeeperd from
# source: about 0.6 s more per daemon start on a 2-core machine. The cache lives outside
# the checkout; Python checks each cached file against its source. This process is not
# affected (both are read at interpreter start-up).
os.environ["PYTHONDONTWRITEBYTECODE"] = ""  # empty: bytecode is written
os.environ.setdefault(
    "PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "lmkeeperd-test-pycache")
)

# Fuzzing budgets: "ci" (hypothesis' defaults) unless HYPOTHESIS_PROFILE says otherwise;
# bench/run_all.py sets "bench" to run the fuzz tests (tests/test_fuzz_*.py) at full size.
settings.register_profile("ci")
settings.register_profile(
    "bench", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Mutation runs (bench/mutation.py): the same examples for every mutant and no example
# database, so a failure found against one mutant is never replayed as a "kill" of the next;
# and no shrinking: a mutant is killed by the first failing example, and shrinking it (often
# 20-30 s) changes no verdict.
settings.register_profile(
    "mutation",
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def daemon_factory(emulator: Emulator) -> Iterator[Callable[..., DaemonProc]]:
    made: list[DaemonProc] = []

    def make(start: bool = True, env: dict[str, str] | None = None, **tables: Any) -> DaemonProc:
        d = DaemonProc(emulator.url, **tables)
        made.append(d)
        if start:
            d.start(env=env)
        return d

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProc]) -> DaemonProc:
    return daemon_factory()
