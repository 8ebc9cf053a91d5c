"""The memory advisory, `lmkeeperd estimate` and memory-pressure eject, end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import DaemonProc
from gguf_synth import write_lmstudio_model

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/llama-3.1-8b-instruct"
GIB = 2**30


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    write_lmstudio_model(folder, "meta-llama", "Llama-3.1-8B-Instruct-GGUF", "llama-3.1-8b")
    return folder


def test_L12_advisory_from_gguf_header_and_load_goes_ahead(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator, models_dir: Path
) -> None:
    d = daemon_factory(
        memory={"models_dir": str(models_dir), "budget_fraction": 0.01},
        model_load={"context_length": 8192},
    )
    d.request({"op": "select", "model": LLAMA})
    d.wait_status(state="loaded", model=LLAMA)
    advisory = d.wait_event("memory_advisory", model=LLAMA)
    # Llama 3.1 8B: 32 layers x 8 KV heads x (128 + 128) x 2 bytes = 128 KiB per token.
    assert advisory["kv_cache_gb"] == round(8192 * 131072 / 1e9, 2)
    assert advisory["source"] == "gguf_header" and advisory["confidence"] == "high"
    for key in ("required_gb", "budget_gb", "available_gb", "total_gb", "message"):
        assert key in advisory
    assert emulator.loaded() == {LLAMA: [LLAMA]}  # warn only, never block
    status = d.status()
    assert status["last_advisory"]["model"] == LLAMA
    assert set(status["memory"]) >= {"total_gb", "available_gb", "budget_gb"}


def test_estimate_cli_with_and_without_a_gguf_file(
    daemon_factory: Callable[..., DaemonProc], models_dir: Path
) -> None:
    d = daemon_factory(start=False, memory={"models_dir": str(models_dir)})
    r = d.cli("estimate", LLAMA, "--context", "8192", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["estimate"]["kv_bytes_per_token"] == 131072
    assert report["estimate"]["source"] == "gguf_header"
    assert report["fits"] is True
    human = d.cli("estimate", LLAMA, "--context", "8192")
    assert "KV cache" in human.stdout and "verdict" in human.stdout
    # No file for this one: a fallback from the server's figures, flagged as such.
    r = d.cli("estimate", "qwen/qwen3-235b-a22b", "--json")
    report = json.loads(r.stdout)
    assert report["estimate"]["source"] != "gguf_header"
    assert report["estimate"]["confidence"] in ("medium", "low")
    assert report["fits"] is False and "may not fit" in report["advisory"]["message"]
    assert r.returncode == 0  # the verdict is `fits`; the exit status says an estimate was made
    human = d.cli("estimate", "qwen/qwen3-235b-a22b")
    assert human.returncode == 0 and "verdict      may not fit" in human.stdout
    assert "anyway" not in human.stdout.lower()  # it loads nothing
    r = d.cli("estimate", "nope/missing")
    assert r.returncode == 1 and "nope/missing" in r.stderr


def test_pressure_eject_waits_for_streams(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # A floor above any real machine's memory: available is always below it.
    d = daemon_factory(memory={"pressure_eject_below": "100TB", "pressure_grace": "1s"})
    with d.client() as c:
        c.request({"op": "select", "model": LLAMA})
        d.wait_status(state="loaded")
        c.request({"op": "stream_start"})
        d.wait_event("memory_pressure", timeout=15)
        assert d.status()["state"] == "streaming" and emulator.loaded() == {LLAMA: [LLAMA]}
        c.request({"op": "stream_end"})
        d.wait_status(state="idle", timeout=15)
    assert d.wait_event("unloaded", model=LLAMA)["reason"] == "memory_pressure"
    assert emulator.loaded() == {}
