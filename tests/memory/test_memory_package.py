"""The package's public names, its import cost, and the pipeline the daemon runs."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

from gguf_synth import ARCHITECTURES, write_gguf

import lmkeeperd.memory as memory
from lmkeeperd.lmstudio.models import ModelInfo, Quantization


def test_every_public_name_resolves_even_after_all_submodules_are_imported() -> None:
    # A submodule named like a function it exports would shadow that function.
    for module in pkgutil.iter_modules(memory.__path__):
        importlib.import_module(f"lmkeeperd.memory.{module.name}")
    for name in memory.__all__:
        value = getattr(memory, name)
        assert not isinstance(value, types.ModuleType), name
    assert callable(memory.estimate) and callable(memory.budget)


def test_importing_the_header_reader_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, lmkeeperd.memory.gguf, lmkeeperd.memory.sizes;"
        "heavy = {'asyncio', 'structlog', 'psutil', 'lmkeeperd.memory.estimator'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_L12_pipeline_from_a_gguf_file_to_the_event(tmp_path: Path) -> None:
    models = tmp_path / "models"
    arch = ARCHITECTURES["llama-3.1-8b"]
    write_gguf(
        models
        / "lmstudio-community"
        / "Meta-Llama-3.1-8B-Instruct-GGUF"
        / "Meta-Llama-3.1-8B-Instruct-Q8_0.gguf",
        arch.metadata(),
    )
    model = ModelInfo(
        key="lmstudio-community/meta-llama-3.1-8b-instruct",
        quantization=Quantization("Q8_0", 8),
        size_bytes=8_540_000_000,
        format="gguf",
    )
    snapshot = memory.StaticProbe(
        memory.MemorySnapshot(total_bytes=16 * 10**9, available_bytes=14 * 10**9)
    ).read()
    est = memory.estimate(model, context_length=32768, models_dir=models)
    assert est is not None and est.source == "gguf_header"
    adv = memory.check(model, est, memory.budget(snapshot, 0.8))
    assert adv is not None
    event = memory.advisory_event(adv)
    assert event["event"] == "memory_advisory"
    # 8.54 GB weights + 4.29 GB KV (131072 B × 32768) + overhead (0.5 GB + compute)
    assert event["kv_cache_gb"] == 4.29
    assert event["required_gb"] > event["budget_gb"] == 12.8
    assert event["fitting_context"] is not None and event["fitting_context"] < 32768
    assert str(event["fitting_context"]) in event["message"]
    # the same switch, counting the 10 GB the previous model frees, still exceeds
    # the 80% budget: freed memory raises what is available, never the budget
    adv_switch = memory.check(model, est, memory.budget(snapshot, 0.8, freed_bytes=10 * 10**9))
    assert adv_switch is not None and adv_switch.budget_bytes == adv.budget_bytes
