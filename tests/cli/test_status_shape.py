"""lmkeeperd/status_types.py describes exactly the status a real daemon replies with.

Each key and each value's type is checked against the TypedDicts, nested records
included, in the two set-ups that fill every optional part: a proxy and a memory
advisory, and a metrics listener of its own.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest
from daemon_harness import DaemonProc
from gguf_synth import write_lmstudio_model

from lmkeeperd.cli.render import render
from lmkeeperd.status_types import MemoryStatus, Status

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/llama-3.1-8b-instruct"


def problems(value: Any, hint: Any, where: str = "status") -> list[str]:
    """Where `value` does not fit the type `hint`; empty when it does."""
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        hints = get_type_hints(hint)
        found = [f"{where}.{k}: not in {hint.__name__}" for k in value if k not in hints]
        found += [f"{where}.{k}: missing" for k in hint.__required_keys__ if k not in value]
        for key, item in value.items():
            if key in hints:
                found += problems(item, hints[key], f"{where}.{key}")
        return found
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [problems(value, option, where) for option in get_args(hint)]
        if any(not p for p in options):
            return []
        # A record's own problems say more than "is not null".
        return next((p for p in options if "is not null" not in p[0]), options[0])
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [
            p
            for i, item in enumerate(value)
            for p in problems(item, get_args(hint)[0], f"{where}[{i}]")
        ]
    if hint is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return [] if ok else [f"{where}: {value!r} is not {hint.__name__}"]


def test_the_checker_finds_a_wrong_key_and_a_wrong_type() -> None:
    assert problems({"total_gb": 1.5, "budget_gb": 2}, MemoryStatus) == []
    assert problems({"total_gb": "1.5"}, MemoryStatus) == ["status.total_gb: '1.5' is not float"]
    assert problems({"colour": 1}, MemoryStatus) == ["status.colour: not in MemoryStatus"]
    assert "status.state: missing" in problems({}, Status)


def test_status_with_a_proxy_and_an_advisory_matches_the_type(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_lmstudio_model(models, "meta-llama", "Llama-3.1-8B-Instruct-GGUF", "llama-3.1-8b")
    d = daemon_factory(
        proxy={"listen": "127.0.0.1:0"},
        memory={"models_dir": str(models), "budget_fraction": 0.01},
        model_load={"context_length": 8192},
    )
    d.request({"op": "select", "model": LLAMA})
    d.wait_status(state="loaded", model=LLAMA)
    d.wait_event("memory_advisory", model=LLAMA)
    status = d.status()
    assert status["proxy"] is not None and status["last_advisory"] is not None
    assert problems(status, Status) == []
    assert set(status) == set(get_type_hints(Status))  # every key, none left out
    shown = render(status)  # the renderer reads the typed record as it arrives
    assert LLAMA in shown and "last advisory" in shown and "proxy" in shown


def test_status_with_metrics_and_nothing_loaded_matches_the_type(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(metrics={"listen": "127.0.0.1:0"})
    status = d.status()
    assert status["metrics"] is not None and status["proxy"] is None
    assert problems(status, Status) == []
