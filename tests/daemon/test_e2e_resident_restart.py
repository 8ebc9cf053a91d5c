"""End to end, real daemon against the emulator: residents across a `kill -9` (L22, L28)
and pinned keys added by a config reload (L28).

A restart keeps the residents its journal says are ours when they fit (`max_loaded`, the
budget): no load is sent again and none is unloaded; one instance each (L22).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
E = "text-embedding-nomic-embed-text-v1.5"


def loaded_residents(d: DaemonProc, *models: str, timeout: float = 15) -> dict[str, Any]:
    """Until exactly `models` are resident and loaded; the status then."""

    def ready() -> dict[str, Any] | None:
        status = d.status()
        found = {r["model"]: r["state"] for r in status["resident"]}
        return status if found == dict.fromkeys(models, "loaded") else None

    return wait_until(ready, timeout, f"residents {models}")  # type: ignore[no-any-return]


def select_loaded(d: DaemonProc, model: str) -> None:
    assert d.request({"op": "select", "model": model})["ok"]
    d.wait_status(model=model, state="loaded", timeout=15)


@pytest.mark.parametrize("switch", ["break-before-make", "auto"])
def test_L28_kill_9_with_two_residents_then_restart_keeps_both_without_a_load(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator, switch: str
) -> None:
    d = daemon_factory(model={"max_loaded": 2, "switch": switch})
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B)
    instances = {m: tuple(ids) for m, ids in emulator.loaded().items()}
    assert loads_of(emulator) == [A, B] and unloads_of(emulator) == []
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait_exit() == -signal.SIGKILL
    d.start()
    d.wait_status(model=B, state="loaded", timeout=15)
    # The reconcile reports A's journaled instance: kept as a resident, not unloaded.
    d.wait_event("stray_adopted", timeout=15, model=A)
    status = loaded_residents(d, A, B)
    rows = {r["model"]: r for r in status["resident"]}
    assert status["model"] == B and rows[B]["current"] and not rows[A]["current"]
    assert {m: r["instance_id"] for m, r in rows.items()} == {
        m: ids[0] for m, ids in instances.items()
    }
    assert {m: tuple(ids) for m, ids in emulator.loaded().items()} == instances  # one each
    assert loads_of(emulator) == [A, B], "no load sent for either after the restart"
    assert unloads_of(emulator) == [] and d.events("stray_found") == []
    # Its idle timer started anew at the restart (idle_timeout is the default, 30 min).
    assert rows[A]["idle_eject_in_s"] is not None and rows[A]["idle_eject_in_s"] > 1700


def test_L28_a_config_reload_that_pins_a_model_loads_it(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory()
    select_loaded(d, A)
    d.tables["model"].update({"pinned": [E]})
    d.write_config()
    d.wait_event("config_reloaded", timeout=10)
    wait_until(lambda: E in emulator.loaded(), 15, "the newly pinned model loaded")
    status = loaded_residents(d, A, E)
    rows = {r["model"]: r for r in status["resident"]}
    assert rows[E]["pinned"] and rows[E]["idle_eject_in_s"] is None
    assert status["model"] == A and loads_of(emulator) == [A, E]
    d.wait_event("pinned_loaded", timeout=5, model=E)
