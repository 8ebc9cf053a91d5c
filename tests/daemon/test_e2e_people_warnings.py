"""What a person sees through the real CLI and a real daemon: memory warnings reach whoever
selected (L12), `status` notes a restored selection only while it is in force, a stop during
a load names what it leaves behind (L16, L22), errors name the next step, and a client that
selects unknown keys in a loop cannot flood the log."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, wait_until
from gguf_synth import write_lmstudio_model

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "google/gemma-3-12b"


def _too_small(factory: Callable[..., DaemonProc], tmp_path: Path) -> DaemonProc:
    """A daemon whose memory budget (1% of this machine) no model fits."""
    models = tmp_path / "models"
    write_lmstudio_model(models, "meta-llama", "Llama-3.1-8B-Instruct-GGUF", "llama-3.1-8b")
    return factory(
        memory={"models_dir": str(models), "budget_fraction": 0.01},
        model_load={"context_length": 8192},
    )


def test_L12_select_of_a_model_that_may_not_fit_warns_on_stderr_and_exits_0(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    d = _too_small(daemon_factory, tmp_path)
    done = d.cli("select", B)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"selected {B}"
    assert f"lmkeeperd: warning: {B} may not fit in memory" in done.stderr, done.stderr
    reply = d.request({"op": "select", "model": B})
    assert reply["memory"]["verdict"] == "may not fit" and reply["memory"]["model"] == B
    d.wait_status(state="loaded", model=B)
    # The same words in `models` as in the select reply and in `estimate`.
    models = d.cli("models", "--json")
    rows = {r["key"]: r for r in json.loads(models.stdout)["models"]}
    assert rows[B]["memory"]["verdict"] == "may not fit"
    assert "may not fit" in d.cli("models").stdout


def test_L12_select_wait_prints_the_advisory_issued_for_this_load(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    d = _too_small(daemon_factory, tmp_path)
    done = d.cli("select", B, "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"loaded {B}")
    assert f"lmkeeperd: warning: at load: {B} may not fit in memory" in done.stderr, done.stderr
    fits = d.cli("select", A, "--wait")  # the budget is tiny: it warns too, and exits 0
    assert fits.returncode == 0 and "warning" in fits.stderr


def test_status_notes_a_restored_selection_only_while_it_is_in_force(
    daemon: DaemonProc,
) -> None:
    assert daemon.cli("select", A, "--wait").returncode == 0
    assert daemon.stop() == 0
    daemon.start()
    daemon.wait_event("selection_restored", model=A)
    row = next(r for r in daemon.cli("status").stdout.splitlines() if r.startswith("selected"))
    assert row.split() == ["selected", A, "(restored)"], row
    assert daemon.cli("select", C).returncode == 0
    daemon.wait_status(selected=C)
    table = daemon.cli("status").stdout
    assert "restored" not in table and "{" not in table, table


def test_L16_sigterm_during_a_load_names_the_model_and_how_to_unload_it(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    emulator.set_load_delay(20.0)
    assert daemon.cli("select", A).returncode == 0
    daemon.wait_status(state="loading")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0
    assert time.monotonic() - started < 2.0 + 3.0  # shutdown_timeout, and a loaded machine
    warned = daemon.events("shutdown_unload_timed_out", model=A)
    assert warned, daemon.log_text()
    message = warned[0]["message"]
    assert A in message and f"`lms unload {A}`" in message and "next start" in message
    assert warned[0]["op"] == "load"


def test_errors_name_the_next_step(daemon: DaemonProc) -> None:
    unknown = daemon.cli("select", "qwen/qwen3-4b")
    assert unknown.returncode == 1
    assert "`lmkeeperd models`" in unknown.stderr, unknown.stderr
    # Nearest first: the key that holds all of what was typed, then the look-alike.
    reply = daemon.request({"op": "select", "model": "qwen/qwen3-4b"})
    assert list(reply["nearest"][:2]) == ["qwen/qwen3-4b-2507", "qwen/qwen3-32b"], reply
    estimate = daemon.cli("estimate", "qwen/qwen3-4b")  # as select says it
    assert estimate.returncode == 1
    assert "did you mean qwen/qwen3-4b-2507, qwen/qwen3-32b" in estimate.stderr, estimate.stderr
    assert "`lmkeeperd models`" in estimate.stderr and "lms ls" not in estimate.stderr
    waited = daemon.cli("select", A, "--wait", "--timeout", "0")
    assert waited.returncode == 1
    assert "goes on with the load" in waited.stderr, waited.stderr


def test_a_thousand_unknown_selections_write_a_handful_of_log_lines(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(log={"format": "json", "level": "info"})
    before = len(d.log_text().splitlines())
    with d.client() as c:
        for i in range(1000):
            key = "nope/nope" if i % 2 else f"nope/nope-{i}"  # the same key, and new ones
            assert c.request({"op": "select", "model": key})["ok"] is False
    wait_until(lambda: d.events("selection_unknown"), 5, "the first selection_unknown")
    assert d.status()["state"] == "idle"  # (a request after the loop: its lines are written)
    written = d.log_text().splitlines()[before:]
    assert len(written) <= 8, written  # the server's first listing, 5 warnings, their count
    assert len(d.events("selection_unknown")) <= 5
