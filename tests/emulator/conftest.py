"""The emulator's own fixtures: a fast-streaming emulator and a client for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from emulator_support import make_client

from lmkeeperd.emulator import Emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(stream_interval=0.001, stream_chunks=5) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with make_client(emu) as c:
        yield c
