"""The estimate: weights + KV cache + overhead, from the best source available."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from gguf_synth import ARCHITECTURES, write_gguf

from lmkeeperd.lmstudio.models import LoadedInstance, ModelInfo, Quantization
from lmkeeperd.memory.estimator import (
    FIXED_OVERHEAD_BYTES,
    LMSTUDIO_DEFAULT_CONTEXT,
    UNKNOWN_COMPUTE_BYTES,
    estimate,
)

QWEN3_8B_SIZE = 5_027_783_488


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    arch = ARCHITECTURES["qwen3-8b"]
    write_gguf(
        root / "lmstudio-community" / "Qwen3-8B-GGUF" / "Qwen3-8B-Q4_K_M.gguf",
        arch.metadata(vocab=1000),
        tensors=arch.tensors(),
    )
    return root


_QWEN3_8B = ModelInfo(
    key="qwen3-8b",
    publisher="qwen",
    architecture="qwen3",
    quantization=Quantization("Q4_K_M", 4),
    size_bytes=QWEN3_8B_SIZE,
    params_string="8B",
    format="gguf",
    max_context_length=40960,
)


def _qwen3_8b(**overrides: Any) -> ModelInfo:
    return dataclasses.replace(_QWEN3_8B, **overrides)


def test_from_the_gguf_header(models: Path) -> None:
    result = estimate(_qwen3_8b(), context_length=8192, models_dir=models)
    assert result is not None
    assert result.source == "gguf_header"
    assert result.confidence == "high"
    assert result.context_length == 8192
    assert result.weights_bytes == QWEN3_8B_SIZE
    # 2 × 36 layers × 8 KV heads × 128 × 2 bytes per token
    assert result.kv_cache_bytes == 147456 * 8192
    # 0.5 GB + ubatch 512 × (vocab 1000 × 4 B + embedding 4096 × 32 B)
    assert result.overhead_bytes == FIXED_OVERHEAD_BYTES + 512 * (1000 * 4 + 4096 * 32)
    assert result.total_bytes == (
        result.weights_bytes + result.kv_cache_bytes + result.overhead_bytes
    )
    assert result.total_at(8192) == result.total_bytes
    assert result.bits_per_weight == pytest.approx(4.85)
    assert any("heuristic" in n for n in result.notes)


def test_kv_cache_scales_with_context_and_element_size(models: Path) -> None:
    short = estimate(_qwen3_8b(), context_length=4096, models_dir=models)
    q8 = estimate(_qwen3_8b(), context_length=4096, models_dir=models, kv_bytes_per_element=1.0625)
    assert short is not None and q8 is not None
    assert short.kv_cache_bytes == 147456 * 4096
    assert q8.kv_cache_bytes == round(36 * 8 * 256 * 4096 * 1.0625)


def test_context_defaults_to_the_loaded_instance_then_lm_studio_default(models: Path) -> None:
    loaded = _qwen3_8b(loaded_instances=(LoadedInstance("qwen3-8b", {"context_length": 16384}),))
    result = estimate(loaded, models_dir=models)
    assert result is not None and result.context_length == 16384
    result = estimate(_qwen3_8b(), models_dir=models)
    assert result is not None and result.context_length == LMSTUDIO_DEFAULT_CONTEXT
    assert any("default 4096" in n for n in result.notes)


def test_context_is_capped_at_the_model_maximum(models: Path) -> None:
    result = estimate(_qwen3_8b(), context_length=1_000_000, models_dir=models)
    assert result is not None and result.context_length == 40960
    no_server_max = estimate(
        _qwen3_8b(max_context_length=None), context_length=1_000_000, models_dir=models
    )
    # the header's qwen3.context_length
    assert no_server_max is not None and no_server_max.context_length == 40960


def test_flash_attention_off_adds_attention_scores_per_token(models: Path) -> None:
    on = estimate(_qwen3_8b(), context_length=8192, models_dir=models, flash_attention=True)
    off = estimate(_qwen3_8b(), context_length=8192, models_dir=models, flash_attention=False)
    assert on is not None and off is not None
    # ubatch 512 × 32 heads × 4 B (f32 scores) per token of context
    assert off.overhead_bytes - on.overhead_bytes == 512 * 32 * 4 * 8192


def test_without_a_file_the_server_figures_and_a_rule_of_thumb(tmp_path: Path) -> None:
    result = estimate(_qwen3_8b(), context_length=8192, models_dir=tmp_path)
    assert result is not None
    assert result.source == "server_metadata"
    assert result.confidence == "medium"
    assert result.weights_bytes == QWEN3_8B_SIZE
    # 48 KiB × sqrt(8) per token
    assert result.kv_cache_bytes == round(48 * 1024 * 8**0.5) * 8192
    assert result.overhead_bytes == FIXED_OVERHEAD_BYTES + UNKNOWN_COMPUTE_BYTES
    assert any("rule of thumb" in n for n in result.notes)


def test_without_size_the_weights_come_from_parameters_and_bits(tmp_path: Path) -> None:
    model = _qwen3_8b(size_bytes=None)
    result = estimate(model, context_length=4096, models_dir=tmp_path)
    assert result is not None
    assert result.source == "server_metadata"
    assert result.confidence == "low"
    assert result.weights_bytes == round(8e9 * 4.85 / 8)


def test_from_the_model_name_alone(tmp_path: Path) -> None:
    model = ModelInfo(key="qwen2.5-7b-instruct-q8_0")
    result = estimate(model, context_length=4096, models_dir=tmp_path)
    assert result is not None
    assert result.source == "model_name"
    assert result.confidence == "low"
    assert result.quantization == "Q8_0"
    assert result.weights_bytes == round(7e9 * 8.5 / 8)


def test_nothing_known_gives_no_estimate(tmp_path: Path) -> None:
    assert estimate(ModelInfo(key="phi-3-mini"), models_dir=tmp_path) is None


def test_a_corrupt_header_falls_back_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "models" / "pub" / "Broken-GGUF" / "Broken-Q4_K_M.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + b"\xff" * 40)
    model = ModelInfo(key="pub/broken", size_bytes=10**9, params_string="1B")
    result = estimate(model, context_length=2048, models_dir=tmp_path / "models")
    assert result is not None
    assert result.source == "server_metadata"
    assert any("could not use Broken-Q4_K_M.gguf" in n for n in result.notes)


def test_a_changed_file_is_read_again(models: Path) -> None:
    path = models / "lmstudio-community" / "Qwen3-8B-GGUF" / "Qwen3-8B-Q4_K_M.gguf"
    first = estimate(_qwen3_8b(), context_length=1024, models_dir=models)
    write_gguf(path, ARCHITECTURES["qwen2.5-7b"].metadata())
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = estimate(_qwen3_8b(), context_length=1024, models_dir=models)
    assert first is not None and second is not None
    assert first.kv_cache_bytes == 147456 * 1024
    assert second.kv_cache_bytes == 57344 * 1024


def test_weights_from_split_files_when_the_server_has_no_size(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "unsloth" / "Big-GGUF"
    arch = ARCHITECTURES["qwen3-30b-a3b"]
    write_gguf(folder / "Big-Q4_K_M-00001-of-00002.gguf", arch.metadata(), pad_to=3000)
    write_gguf(folder / "Big-Q4_K_M-00002-of-00002.gguf", {}, pad_to=5000)
    model = ModelInfo(key="unsloth/big", quantization=Quantization("Q4_K_M"))
    result = estimate(model, context_length=4096, models_dir=tmp_path / "models")
    assert result is not None
    assert result.source == "gguf_header"
    assert result.weights_bytes == 8000
    assert result.kv_cache_bytes == 98304 * 4096


def test_mla_and_recurrent_layers_lower_confidence_to_medium(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "deepseek" / "Lite-GGUF"
    write_gguf(folder / "Lite-Q4_K_M.gguf", ARCHITECTURES["deepseek-v2-lite"].metadata())
    model = ModelInfo(key="deepseek/lite", size_bytes=10**10)
    result = estimate(model, context_length=4096, models_dir=tmp_path / "models")
    assert result is not None
    assert result.confidence == "medium"
    assert result.kv_cache_bytes == 27 * 576 * 2 * 4096


def test_an_mlx_folder_uses_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "mlx-community" / "Qwen3-8B-4bit"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3",
                "num_hidden_layers": 36,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "head_dim": 128,
                "hidden_size": 4096,
                "vocab_size": 151936,
            }
        )
    )
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    model = ModelInfo(
        key="mlx-community/qwen3-8b-4bit", format="mlx", quantization=Quantization("4bit", 4)
    )
    result = estimate(model, context_length=8192, models_dir=tmp_path / "models")
    assert result is not None
    assert result.source == "model_config"
    assert result.confidence == "medium"
    assert result.weights_bytes == 100
    assert result.kv_cache_bytes == 147456 * 8192
    assert result.bits_per_weight == pytest.approx(4.5)


def test_a_broken_config_json_falls_back(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "mlx-community" / "Broken-4bit"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{not json")
    model = ModelInfo(key="mlx-community/broken-4bit", size_bytes=10**9, params_string="2B")
    result = estimate(model, context_length=2048, models_dir=tmp_path / "models")
    assert result is not None
    assert result.source == "server_metadata"
    assert any("could not use" in n for n in result.notes)


def test_a_models_dir_that_does_not_exist_is_noted(tmp_path: Path) -> None:
    result = estimate(_qwen3_8b(), context_length=1024, models_dir=tmp_path / "nope")
    assert result is not None
    assert any("does not exist" in n for n in result.notes)
