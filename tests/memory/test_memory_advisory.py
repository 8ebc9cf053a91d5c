"""The advisory: when it is raised, what it says, and the event it becomes (L12)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmkeeperd.lmstudio.models import ModelInfo, Quantization
from lmkeeperd.memory.advisory import advisory_event, check
from lmkeeperd.memory.budgeting import Budget, budget
from lmkeeperd.memory.estimator import Estimate, KVModel, OverheadModel
from lmkeeperd.memory.probe import GpuInfo, MemorySnapshot

GB = 10**9
PER_TOKEN = 131072  # Llama 3.1 8B, f16


def _estimate(
    weights: int = 8 * GB,
    context: int = 32768,
    bits: float | None = 8.5,
    per_token: int = PER_TOKEN,
    confidence: Any = "high",
    source: Any = "gguf_header",
    fmt: str = "gguf",
) -> Estimate:
    kv = KVModel(bytes_per_token=per_token)
    overhead = OverheadModel(fixed_bytes=500_000_000, compute_bytes=300_000_000)
    return Estimate(
        model="meta-llama-3.1-8b-instruct",
        weights_bytes=weights,
        kv_cache_bytes=kv.bytes(context),
        overhead_bytes=overhead.bytes(context),
        context_length=context,
        confidence=confidence,
        source=source,
        bits_per_weight=bits,
        quantization="Q8_0",
        format=fmt,
        kv_model=kv,
        overhead_model=overhead,
    )


MODEL = ModelInfo(
    key="meta-llama-3.1-8b-instruct", quantization=Quantization("Q8_0", 8), format="gguf"
)


def _budget(total: int = 16 * GB, available: int = 14 * GB, **kwargs: Any) -> Budget:
    freed = kwargs.pop("freed_bytes", 0)
    return budget(MemorySnapshot(total, available, **kwargs), 0.8, freed_bytes=freed)


def test_L12_no_advisory_when_the_model_fits() -> None:
    assert check(MODEL, _estimate(context=4096), _budget()) is None


def test_L12_advisory_names_figures_a_context_and_a_quantization_that_fit() -> None:
    # 8 GB weights + 4.29 GB KV (131072 B × 32768) + 0.8 GB overhead = 13.09 GB > 12.8 GB
    adv = check(MODEL, _estimate(), _budget())
    assert adv is not None
    assert adv.required_gb == 13.09
    assert adv.budget_gb == 12.8
    assert adv.available_gb == 14.0
    assert adv.total_gb == 16.0
    # 8 GB + 0.8 GB + 131072 × c ≤ 12.8 GB → c ≤ 30517 → 29696 (a multiple of 1024)
    assert adv.fitting_context == 29696
    # Q6_K: 8 GB × 6.6 / 8.5 = 6.21 GB of weights → 11.3 GB
    assert adv.suggested_quantization == "Q6_K"
    assert "meta-llama-3.1-8b-instruct" in adv.message
    assert "13.09 GB" in adv.message and "12.80 GB" in adv.message
    assert "context_length to 29696" in adv.message
    assert "Q6_K" in adv.message and "6.21 GB of weights" in adv.message
    # It loads nothing itself (`estimate` shows it too), and the breakdown is in the fields.
    assert "Loading anyway" not in adv.message
    assert "KV cache" not in adv.message and "\n" not in adv.message


def test_L12_event_payload_has_every_field_in_gb_with_two_decimals() -> None:
    adv = check(MODEL, _estimate(), _budget())
    assert adv is not None
    event = advisory_event(adv)
    assert event == {
        "event": "memory_advisory",
        "model": "meta-llama-3.1-8b-instruct",
        "required_gb": 13.09,
        "budget_gb": 12.8,
        "available_gb": 14.0,
        "total_gb": 16.0,
        "weights_gb": 8.0,
        "kv_cache_gb": 4.29,
        "overhead_gb": 0.8,
        "context_length": 32768,
        "fitting_context": 29696,
        "suggested_quantization": "Q6_K",
        "confidence": "high",
        "source": "gguf_header",
        "message": adv.message,
    }


def test_less_available_than_the_budget_is_what_counts() -> None:
    adv = check(MODEL, _estimate(context=4096), _budget(available=8 * GB))
    assert adv is not None
    assert "only 8.00 GB is available" in adv.message
    # 8 GB of weights leave nothing for context: only a smaller quantization helps
    assert adv.fitting_context is None
    assert adv.suggested_quantization is not None


def test_freed_memory_at_a_switch_avoids_a_false_advisory() -> None:
    # LM Studio #1562: 6 GB free while a 10 GB model is loaded; it is unloaded first.
    small = _estimate(weights=4 * GB, context=4096)
    assert check(MODEL, small, _budget(available=4 * GB)) is not None
    assert check(MODEL, small, _budget(available=4 * GB, freed_bytes=10 * GB)) is None


def test_message_counts_the_freed_memory() -> None:
    adv = check(MODEL, _estimate(), _budget(available=2 * GB, freed_bytes=3 * GB))
    assert adv is not None
    assert "counting the 3.00 GB the unloaded model frees" in adv.message


def test_when_nothing_fits_it_says_to_pick_a_smaller_model() -> None:
    huge = _estimate(weights=140 * GB, context=8192)
    adv = check(MODEL, huge, _budget())
    assert adv is not None
    assert adv.fitting_context is None and adv.suggested_quantization is None
    assert "smaller model" in adv.message


def test_unknown_quantization_still_suggests_a_smaller_one() -> None:
    adv = check(MODEL, _estimate(bits=None), _budget())
    assert adv is not None
    assert "smaller quantization" in adv.message


def test_mlx_models_get_mlx_quantizations() -> None:
    mlx = ModelInfo(key="mlx-community/x-8bit", format="mlx")
    adv = check(mlx, _estimate(bits=8.5, fmt="mlx", context=4096, weights=13 * GB), _budget())
    assert adv is not None
    assert adv.suggested_quantization in {"6bit", "5bit", "4bit", "3bit"}


def test_a_container_limit_is_named() -> None:
    snapshot_kwargs = {"cgroup_limit_bytes": 10 * GB}
    adv = check(MODEL, _estimate(context=4096), _budget(total=64 * GB, **snapshot_kwargs))
    assert adv is not None
    assert "of the 10.00 GB memory limit" in adv.message
    assert adv.total_gb == 10.0


def test_apple_silicon_says_the_gpu_shares_ram() -> None:
    adv = check(MODEL, _estimate(), _budget(is_apple_silicon=True))
    assert adv is not None
    assert "Apple Silicon" in adv.message


def test_low_confidence_is_said() -> None:
    adv = check(MODEL, _estimate(confidence="low", source="model_name"), _budget())
    assert adv is not None
    assert "low-confidence estimate, from the model's name" in adv.message


def test_an_nvidia_gpu_takes_what_fits_in_free_vram() -> None:
    gpu = GpuInfo("RTX 4070", total_bytes=12 * GB, free_bytes=11 * GB)
    # 13.09 GB: 11 GB to the GPU, 2.09 GB in RAM: fits the 12.8 GB budget
    assert check(MODEL, _estimate(), _budget(gpu=gpu)) is None
    small_gpu = GpuInfo("RTX 3050", total_bytes=4 * GB, free_bytes=1 * GB)
    adv = check(MODEL, _estimate(), _budget(available=10 * GB, gpu=small_gpu))
    assert adv is not None
    assert adv.ram_required_bytes == adv.required_bytes - 1 * GB
    event = advisory_event(adv)
    assert event["vram_free_gb"] == 1.0 and event["vram_total_gb"] == 4.0
    assert event["gpu_offload_gb"] == 1.0
    assert "can go to the GPU" in adv.message


def test_apple_silicon_gpu_info_is_not_dedicated_memory() -> None:
    gpu = GpuInfo("unified", total_bytes=16 * GB, free_bytes=16 * GB)
    assert check(MODEL, _estimate(), _budget(gpu=gpu, is_apple_silicon=True)) is not None


@given(
    weights=st.integers(min_value=0, max_value=100 * GB),
    per_token=st.integers(min_value=1, max_value=1_000_000),
    context=st.integers(min_value=1, max_value=300_000),
    total=st.integers(min_value=GB, max_value=200 * GB),
    fraction=st.floats(min_value=0.1, max_value=1.0),
)
def test_fitting_context_is_the_longest_step_that_fits(
    weights: int, per_token: int, context: int, total: int, fraction: float
) -> None:
    est = _estimate(weights=weights, per_token=per_token, context=context)
    b = budget(MemorySnapshot(total, total), fraction)
    adv = check(MODEL, est, b)
    if adv is None:
        assert est.total_bytes <= b.usable_bytes
        return
    assert est.total_bytes > b.usable_bytes
    if adv.fitting_context is not None:
        assert adv.fitting_context % 1024 == 0
        assert adv.fitting_context < context
        assert est.total_at(adv.fitting_context) <= b.usable_bytes
        longer = adv.fitting_context + 1024
        assert longer >= context or est.total_at(longer) > b.usable_bytes
    else:
        assert context <= 1024 or est.total_at(1024) > b.usable_bytes


@pytest.mark.parametrize("bits", [16.0, 8.5, 6.6, 4.85])
def test_suggested_quantization_is_smaller_than_the_current_one(bits: float) -> None:
    adv = check(MODEL, _estimate(bits=bits, weights=12 * GB, context=2048), _budget())
    assert adv is not None
    if adv.suggested_quantization is not None:
        from lmkeeperd.memory.names import bits_per_weight

        suggested = bits_per_weight(adv.suggested_quantization)
        assert suggested is not None and suggested < bits
