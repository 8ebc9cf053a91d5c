"""KV cache sizes from attention geometry, checked against hand arithmetic.

The expected figures are written out as products of published config values
(see the comments in gguf_synth.ARCHITECTURES), not computed by the code under
test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gguf_synth import ARCHITECTURES, write_gguf

from lmkeeperd.memory.gguf import read_gguf_header
from lmkeeperd.memory.kv import GeometryError, geometry_from_gguf, geometry_from_hf_config

GiB = 2**30


def _geometry(tmp_path: Path, metadata: dict[str, Any]) -> Any:
    # Through a real file, so the reader's view of the metadata is what is tested.
    return geometry_from_gguf(read_gguf_header(write_gguf(tmp_path / "m.gguf", metadata)).metadata)


def test_llama_3_8b_is_128_kib_per_token_and_1_gib_at_8k(tmp_path: Path) -> None:
    geometry = _geometry(tmp_path, ARCHITECTURES["llama-3.1-8b"].metadata())
    # 2 (K and V) × 32 layers × 8 KV heads × 128 head dim × 2 bytes (f16)
    assert geometry.bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert geometry.kv_cache_bytes(8192) == 1 * GiB


@pytest.mark.parametrize(
    ("name", "hand_derived"),
    [
        ("llama-3.1-8b", 2 * 32 * 8 * 128 * 2),
        ("qwen3-8b", 2 * 36 * 8 * 128 * 2),
        ("qwen3-4b", 2 * 36 * 8 * 128 * 2),
        ("qwen2.5-7b", 2 * 28 * 4 * (3584 // 28) * 2),
        ("mistral-7b-v0.3", 2 * 32 * 8 * (4096 // 32) * 2),
        # full-attention layers only: 48 / 6 = 8 of them
        ("gemma-3-12b", 2 * 8 * 8 * 256 * 2),
        ("qwen3-30b-a3b", 2 * 48 * 4 * 128 * 2),
        # MLA latent: (kv_lora_rank 512 + rope 64) per layer, no separate V
        ("deepseek-v2-lite", 27 * (512 + 64) * 2),
        # per-layer KV heads [3]*5 + [4]*7 + [5]*4, head 64
        ("openelm-270m", 2 * (5 * 3 + 7 * 4 + 4 * 5) * 64 * 2),
    ],
)
def test_bytes_per_token_matches_hand_arithmetic(
    tmp_path: Path, name: str, hand_derived: int
) -> None:
    assert ARCHITECTURES[name].bytes_per_token == hand_derived
    geometry = _geometry(tmp_path, ARCHITECTURES[name].metadata())
    assert geometry.bytes_per_token() == hand_derived


def test_qwen3_4b_head_size_comes_from_key_length_not_embedding(tmp_path: Path) -> None:
    # hidden 2560 / 32 heads = 80, but Qwen3 4B's heads are 128 wide.
    geometry = _geometry(tmp_path, ARCHITECTURES["qwen3-4b"].metadata())
    assert set(geometry.key_length) == {128}


def test_gemma3_sliding_layers_keep_only_window_plus_ubatch(tmp_path: Path) -> None:
    geometry = _geometry(tmp_path, ARCHITECTURES["gemma-3-12b"].metadata())
    assert geometry.sliding.count(True) == 40
    assert [il for il, s in enumerate(geometry.sliding) if not s] == [5, 11, 17, 23, 29, 35, 41, 47]
    per_layer_token = 8 * (256 + 256) * 2
    context = 32768
    # 8 global layers at the full context; 40 local ones at pad256(1024 + 512) = 1536 cells
    expected = 8 * per_layer_token * context + 40 * per_layer_token * 1536
    assert geometry.kv_cache_bytes(context) == expected
    # Below the window every layer holds the whole (short) context.
    assert geometry.kv_cache_bytes(1024) == 48 * per_layer_token * 1024
    assert any("sliding window on 40 of 48 layers" in n for n in geometry.notes)


def test_parallel_slots_widen_the_sliding_cache(tmp_path: Path) -> None:
    geometry = _geometry(tmp_path, ARCHITECTURES["gemma-3-12b"].metadata())
    per_layer_token = 8 * 512 * 2
    expected = 8 * per_layer_token * 32768 + 40 * per_layer_token * (4 * 1024 + 512)
    assert geometry.kv_cache_bytes(32768, parallel=4) == expected


def test_sliding_pattern_from_metadata_wins_over_the_built_in(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "gemma4",
        "gemma4.block_count": 6,
        "gemma4.attention.head_count": 8,
        "gemma4.attention.head_count_kv": 2,
        "gemma4.attention.key_length": 256,
        "gemma4.attention.value_length": 256,
        "gemma4.attention.key_length_swa": 128,
        "gemma4.attention.value_length_swa": 128,
        "gemma4.attention.sliding_window": 512,
        "gemma4.attention.sliding_window_pattern": [True, True, False, True, True, False],
    }
    geometry = _geometry(tmp_path, meta)
    # 4 sliding layers: 2 heads × (128 + 128) × pad256(512 + 512) cells × 2 B;
    # 2 full layers: 2 heads × (256 + 256) × 8192 × 2 B
    assert geometry.kv_cache_bytes(8192) == 4 * 2 * 256 * 1024 * 2 + 2 * 2 * 512 * 8192 * 2


def test_sliding_window_on_an_architecture_llama_cpp_runs_dense_counts_full(
    tmp_path: Path,
) -> None:
    meta = ARCHITECTURES["mistral-7b-v0.3"].metadata()
    meta["llama.attention.sliding_window"] = 4096
    geometry = _geometry(tmp_path, meta)
    assert not any(geometry.sliding)
    assert geometry.kv_cache_bytes(32768) == 131072 * 32768
    assert any("full attention" in n for n in geometry.notes)


def test_moe_expert_count_does_not_change_the_cache(tmp_path: Path) -> None:
    moe = ARCHITECTURES["qwen3-30b-a3b"].metadata()
    dense = {k: v for k, v in moe.items() if "expert" not in k}
    assert _geometry(tmp_path, moe).kv_cache_bytes(4096) == geometry_from_gguf(
        {k: v for k, v in dense.items()}
    ).kv_cache_bytes(4096)
    assert _geometry(tmp_path, moe).expert_count == 128


def test_mla_without_explicit_head_fields_uses_lora_rank_plus_rope(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "deepseek2",
        "deepseek2.block_count": 61,
        "deepseek2.embedding_length": 7168,
        "deepseek2.attention.head_count": 128,
        "deepseek2.attention.kv_lora_rank": 512,
        "deepseek2.attention.key_length_mla": 192,
        "deepseek2.rope.dimension_count": 64,
    }
    geometry = _geometry(tmp_path, meta)
    assert geometry.is_mla
    # DeepSeek V3: 61 layers × 576 latent × 2 B
    assert geometry.bytes_per_token() == 61 * 576 * 2


def test_deepseek_converted_before_mla_is_counted_with_full_heads(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "deepseek2",
        "deepseek2.block_count": 27,
        "deepseek2.embedding_length": 2048,
        "deepseek2.attention.head_count": 16,
        "deepseek2.attention.head_count_kv": 16,
        "deepseek2.attention.key_length": 192,
        "deepseek2.attention.value_length": 128,
        "deepseek2.attention.kv_lora_rank": 512,
    }
    geometry = _geometry(tmp_path, meta)
    assert not geometry.is_mla
    assert geometry.bytes_per_token() == 27 * 16 * (192 + 128) * 2


def test_layers_with_zero_kv_heads_are_recurrent(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "jamba",
        "jamba.block_count": 8,
        "jamba.embedding_length": 4096,
        "jamba.attention.head_count": 32,
        "jamba.attention.head_count_kv": [0, 0, 0, 0, 8, 0, 0, 0],
    }
    geometry = _geometry(tmp_path, meta)
    assert geometry.bytes_per_token() == 1 * 8 * (128 + 128) * 2
    assert any("recurrent" in n for n in geometry.notes)


def test_hybrid_full_attention_interval(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "qwen3next",
        "qwen3next.block_count": 48,
        "qwen3next.embedding_length": 2048,
        "qwen3next.attention.head_count": 16,
        "qwen3next.attention.head_count_kv": 2,
        "qwen3next.attention.key_length": 256,
        "qwen3next.attention.value_length": 256,
        "qwen3next.full_attention_interval": 4,
    }
    geometry = _geometry(tmp_path, meta)
    # layers 3, 7, …, 47 have attention: 12 of 48
    assert geometry.bytes_per_token() == 12 * 2 * 512 * 2


def test_shared_kv_layers_hold_nothing(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "gemma3n",
        "gemma3n.block_count": 10,
        "gemma3n.embedding_length": 2048,
        "gemma3n.attention.head_count": 8,
        "gemma3n.attention.head_count_kv": 2,
        "gemma3n.attention.key_length": 256,
        "gemma3n.attention.value_length": 256,
        "gemma3n.attention.sliding_window": 512,
        "gemma3n.attention.shared_kv_layers": 4,
    }
    geometry = _geometry(tmp_path, meta)
    assert geometry.kv_heads == (2,) * 6 + (0,) * 4


def test_pure_recurrent_model_has_no_cache(tmp_path: Path) -> None:
    geometry = _geometry(tmp_path, {"general.architecture": "mamba", "mamba.block_count": 64})
    assert geometry.kv_cache_bytes(100_000) == 0


def test_head_count_kv_defaults_to_head_count(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 32,
        "llama.embedding_length": 4096,
        "llama.attention.head_count": 32,
    }
    # Llama 2 7B: full multi-head attention, 512 KiB per token
    assert _geometry(tmp_path, meta).bytes_per_token() == 2 * 32 * 32 * 128 * 2


def test_vocab_comes_from_the_token_array_length(tmp_path: Path) -> None:
    geometry = _geometry(tmp_path, ARCHITECTURES["qwen3-8b"].metadata(vocab=1000))
    assert geometry.vocab_size == 1000


@pytest.mark.parametrize(
    ("metadata", "missing"),
    [
        ({}, "general.architecture"),
        ({"general.architecture": "llama"}, "llama.block_count"),
        ({"general.architecture": "llama", "llama.block_count": 2}, "head_count"),
        (
            {
                "general.architecture": "llama",
                "llama.block_count": 2,
                "llama.attention.head_count": 4,
            },
            "key_length",
        ),
        (
            {
                "general.architecture": "llama",
                "llama.block_count": 4,
                "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": (1, 2),
                "llama.embedding_length": 64,
            },
            "2 entries for 4 layers",
        ),
        (
            {
                "general.architecture": "llama",
                "llama.block_count": 1,
                "llama.attention.head_count": "x",
            },
            "not a count",
        ),
    ],
)
def test_incomplete_metadata_names_what_is_missing(metadata: dict[str, Any], missing: str) -> None:
    with pytest.raises(GeometryError, match=missing):
        geometry_from_gguf(metadata)


def test_hf_config_for_an_mlx_folder() -> None:
    # Qwen3-8B config.json (as shipped in mlx-community/Qwen3-8B-4bit)
    config = {
        "model_type": "qwen3",
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_size": 4096,
        "max_position_embeddings": 40960,
        "vocab_size": 151936,
    }
    geometry = geometry_from_hf_config(config)
    assert geometry.bytes_per_token() == 2 * 36 * 8 * 128 * 2
    assert geometry.trained_context == 40960


def test_hf_config_gemma3_with_layer_types_and_nested_text_config() -> None:
    layer_types = ["sliding_attention"] * 5 + ["full_attention"]
    config = {
        "model_type": "gemma3",
        "text_config": {
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "hidden_size": 2560,
            "sliding_window": 1024,
            "layer_types": layer_types,
        },
    }
    geometry = geometry_from_hf_config(config)
    assert geometry.sliding == (True,) * 5 + (False,)
    assert geometry.sliding_window == 1024
