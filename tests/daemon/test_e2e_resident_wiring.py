"""L24-L26 wired through the daemon, end to end: a real daemon process, the real emulator.

What the daemon adds around the core's residency rules: `status` shows every resident
(`resident`, `budget`), a reselection of a resident model sends LM Studio nothing, the
pinned model is loaded at start, `unload MODEL` unloads any resident, `models` marks
residents, `stream_start` names its model. (The rules themselves, eviction order,
make-before-break and the soak are in the core's tests and test_e2e_residency*.py.)
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until

from lmkeeperd.daemon.activity_bridge import STATUS_CACHE_S
from lmkeeperd.daemon.selection_check import CATALOG_MAX_AGE_S
from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
E = "text-embedding-nomic-embed-text-v1.5"
RESIDENT_KEYS = {
    "model",
    "instance_id",
    "state",
    "pinned",
    "current",
    "last_used_ago_s",
    "idle_eject_in_s",
    "estimate_gb",
    "doing",
    "streams",
}


def residents(d: DaemonProc) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in d.status()["resident"]}


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


def test_L24_status_shows_two_residents_after_selecting_two_models(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2})
    select_loaded(d, A)
    select_loaded(d, B)
    status = loaded_residents(d, A, B)
    assert status["model"] == B and status["state"] == "loaded"  # still the current model
    rows = {r["model"]: r for r in status["resident"]}
    assert all(set(r) == RESIDENT_KEYS for r in rows.values()), rows
    assert status["resident"][0]["model"] == B  # the current one first
    assert rows[B]["current"] and not rows[A]["current"]
    assert not rows[A]["pinned"] and rows[A]["streams"] == 0
    assert sorted(emulator.loaded()) == sorted([A, B])
    assert {rows[m]["instance_id"] for m in (A, B)} == {
        emulator.loaded()[A][0],
        emulator.loaded()[B][0],
    }
    assert all(isinstance(rows[m]["estimate_gb"], float) for m in (A, B))
    budget = status["budget"]
    assert budget["residents"] == 2 and budget["max_loaded"] == 2
    assert budget["used_gb"] == pytest.approx(
        rows[A]["estimate_gb"] + rows[B]["estimate_gb"], abs=0.01
    )
    table = d.cli("status")
    assert table.returncode == 0, table.stderr
    assert "resident models:" in table.stdout and A in table.stdout and B in table.stdout
    assert "budget" in table.stdout


def test_L24_reselecting_a_resident_model_sends_no_load(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2})
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B)
    before = len(emulator.requests())
    select_loaded(d, A)  # resident: made current, nothing sent
    status = loaded_residents(d, A, B)
    assert status["model"] == A
    sent = [r.path for r in emulator.requests()[before:]]
    assert "/api/v1/models/load" not in sent and "/api/v1/models/unload" not in sent, sent
    assert loads_of(emulator) == [A, B]
    assert unloads_of(emulator) == []


def test_L24_L29_reselecting_residents_sends_lm_studio_nothing_at_all(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2, "idle_timeout": "30m"})
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B)
    # The channel is open: a look at a resident (L29) would show in its frames, and the
    # REST reconcile is a 5-minute safety net, not a listing every second.
    d.wait_status(activity_source="lmstudio", timeout=15)
    # Past every listing or look a selection could lean on: the catalog's (L23), status's.
    time.sleep(max(CATALOG_MAX_AGE_S, STATUS_CACHE_S) + 0.5)
    mark = time.monotonic()
    for model in (A, B) * 5:
        assert d.request({"op": "select", "model": model}) == {"ok": True}
    time.sleep(0.5)  # whatever the selections set off arrives meanwhile
    end = time.monotonic()
    rest = [f"{r.method} {r.path}" for r in emulator.requests() if mark < r.t <= end]
    calls = [f.endpoint for f in emulator.frames() if f.endpoint and mark < f.t <= end]
    assert rest == [] and calls == [], (rest, calls)
    status = loaded_residents(d, A, B)  # `status` itself asks live (L29): after the count
    assert status["model"] == B and status["selected"] == B
    assert loads_of(emulator) == [A, B] and unloads_of(emulator) == []


def test_L25_a_pinned_model_is_loaded_at_start_and_kept(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"pinned": [E], "idle_timeout": "2s"})
    wait_until(lambda: E in emulator.loaded(), 15, "the pinned model loaded at start")
    status = loaded_residents(d, E)
    (row,) = status["resident"]
    assert row["pinned"] and row["idle_eject_in_s"] is None
    select_loaded(d, A)  # the selected model beside it: pinned ones do not count
    loaded_residents(d, A, E)
    assert loads_of(emulator).count(E) == 1


def test_L23_an_unknown_pinned_key_is_reported_and_changes_nothing(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"pinned": ["nomic-embed-text-typo", E]})
    event = d.wait_event("selection_unknown", timeout=15, source="pinned")
    assert event["model"] == "nomic-embed-text-typo" and E in event["nearest"]
    wait_until(lambda: E in emulator.loaded(), 15, "the known pinned model loaded")
    assert "nomic-embed-text-typo" not in loads_of(emulator)


def test_L18_unload_model_unloads_any_resident_even_a_pinned_one(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2, "pinned": [E]})
    wait_until(lambda: E in emulator.loaded(), 15, "the pinned model")
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B, E)
    assert d.request({"op": "unload", "model": A})["ok"]  # resident, not current
    status = loaded_residents(d, B, E)
    assert status["model"] == B
    assert A not in emulator.loaded()
    assert d.request({"op": "unload", "model": E})["ok"]  # pinned: followed as by hand
    loaded_residents(d, B)
    assert E not in emulator.loaded()


def test_models_marks_residents(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2, "pinned": [E]})
    wait_until(lambda: E in emulator.loaded(), 15, "the pinned model")
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B, E)
    reply = d.request({"op": "models"}, timeout=30)
    marks = {row["key"]: row["resident"] for row in reply["models"]}
    assert marks[B] == {"state": "loaded", "pinned": False, "current": True}
    assert marks[A] == {"state": "loaded", "pinned": False, "current": False}
    assert marks[E] == {"state": "loaded", "pinned": True, "current": False}
    assert marks["google/gemma-3-12b"] is None
    listed = d.cli("models")
    assert listed.returncode == 0, listed.stderr
    line_of = {ln.split()[0]: ln for ln in listed.stdout.splitlines()[1:] if ln.strip()}
    assert "current" in line_of[B] and "pinned" in line_of[E] and "resident" in line_of[A]


def test_L24_a_stream_naming_a_resident_counts_for_it(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2})
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B)
    with d.client() as c:
        opened = c.request({"op": "stream_start", "model": A})
        assert opened["ok"], opened
        rows = residents(d)
        assert rows[A]["streams"] == 1 and rows[B]["streams"] == 0
        assert c.request({"op": "activity", "model": B})["ok"]
        bad = c.request({"op": "stream_start", "model": ""})
        assert not bad["ok"] and "empty" in bad["error"]
        assert c.request({"op": "stream_end"})["ok"]
    wait_until(lambda: residents(d)[A]["streams"] == 0, 5, "the stream ended")


def test_L22_kill_9_with_two_residents_then_restart_leaves_one_instance_of_each(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2})
    select_loaded(d, A)
    select_loaded(d, B)
    loaded_residents(d, A, B)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait_exit() == -signal.SIGKILL
    d.start()
    d.wait_status(model=B, state="loaded", timeout=15)
    # The reconcile collects what the journal says is ours: adopted or unloaded, never doubled.
    wait_until(
        lambda: all(len(ids) == 1 for ids in emulator.loaded().values()), 15, "one instance each"
    )

    # What the journal says is ours is collected at once after the restored selection
    # (lifetime.py): adopted as a resident or unloaded as a stray, never left untracked
    # and never doubled; within max_loaded.
    def settled() -> dict[str, Any] | None:
        status = d.status()
        ours = {r["model"] for r in status["resident"] if r["state"] == "loaded"}
        return status if ours == set(emulator.loaded()) else None

    status = wait_until(settled, 10, "every instance on the server a resident of ours")
    assert status["model"] == B and len(status["resident"]) <= 2
    assert all(len(ids) == 1 for ids in emulator.loaded().values()), emulator.loaded()
    assert loads_of(emulator) == [A, B], json.dumps(loads_of(emulator))


def test_L25_a_pinned_model_is_loaded_again_after_lm_studio_comes_back(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"pinned": [E]})
    wait_until(lambda: E in emulator.loaded(), 15, "the pinned model loaded at start")
    emulator.go_down()
    d.wait_event("server_unreachable", timeout=15)
    emulator.come_back(forget=True)  # a restart of LM Studio: nothing loaded
    wait_until(lambda: E in emulator.loaded(), 20, "the pinned model loaded again")
    loaded_residents(d, E)
    assert loads_of(emulator) == [E, E]


def test_a_reload_applies_max_loaded(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory()
    select_loaded(d, A)
    d.tables["model"].update({"max_loaded": 2})
    d.write_config()
    d.wait_event("config_reloaded", timeout=10)
    select_loaded(d, B)
    status = loaded_residents(d, B, A)
    assert status["budget"]["max_loaded"] == 2
    assert unloads_of(emulator) == []  # A stayed: two selected models may be resident now


def test_L27_a_guardrail_refusal_reaches_the_core_evicts_and_is_counted(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"max_loaded": 2}, metrics={"listen": "127.0.0.1:0"})
    select_loaded(d, A)
    emulator.set_guardrail(max_models=1)  # LM Studio refuses a second model
    with d.subscribe() as sub:
        assert d.request({"op": "select", "model": B})["ok"]
        refused = sub.wait_for("load_refused", model=B)
        evicted = sub.wait_for("evicted", model=A)
    assert refused["message"]
    assert evicted["reason"] == "refused by LM Studio" and evicted["for"] == B
    d.wait_status(model=B, state="loaded", timeout=15)
    loaded_residents(d, B)
    assert d.events("load_refused", model=B)[0]["level"] == "warning"
    import httpx

    metrics = httpx.get(
        "http://" + d.status()["metrics"]["listen"] + "/lmkeeperd/metrics", trust_env=False
    ).text
    assert "lmkeeperd_load_refusals_total 1" in metrics
    assert 'lmkeeperd_evictions_total{reason="refused by LM Studio"} 1' in metrics
