"""Fixtures of the client's contract tests: the fake, the emulator, both as backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lmstudio_contract_support import TOKEN_ENV, Backend, EmulatorBackend, FakeLMStudio, MockBackend

from lmkeeperd.emulator import Emulator


@pytest.fixture(autouse=True)
def _no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def fake() -> FakeLMStudio:
    return FakeLMStudio()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(params=["mock", "emulator"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "mock":
        yield MockBackend(FakeLMStudio())
    else:
        with Emulator() as emulator:
            yield EmulatorBackend(emulator)
