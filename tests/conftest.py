"""Fixtures shared by the end-to-end tests: the emulator and the daemon process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from daemon_harness import DaemonProc

from lmkeeperd.emulator import Emulator


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
