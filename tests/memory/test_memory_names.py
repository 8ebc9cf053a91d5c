"""Parameter counts and bits per weight from labels and model keys."""

from __future__ import annotations

import pytest

from lmkeeperd.memory.names import (
    ParamCount,
    bits_per_weight,
    kv_bytes_per_token_rule_of_thumb,
    params_from_key,
    parse_params,
    quant_from_key,
)

B = 1e9


@pytest.mark.parametrize(
    ("text", "total", "dense"),
    [
        ("4B", 4 * B, 4 * B),
        ("7B", 7 * B, 7 * B),
        ("0.5B", 0.5 * B, 0.5 * B),
        ("1.5B", 1.5 * B, 1.5 * B),
        ("270M", 0.27 * B, 0.27 * B),
        ("235B-A22B", 235 * B, 22 * B),
        ("30B-A3B", 30 * B, 3 * B),
        # Mixtral: experts share attention, so 8x7B is 0.82 × 56B (really 46.7B)
        ("8x7B", 8 * 7 * 0.82 * B, 7 * B),
        ("8x22b", 8 * 22 * 0.82 * B, 22 * B),
        # Gemma 3n: 4B effective, ~7.6B stored
        ("E4B", 4 * 1.9 * B, 4 * B),
    ],
)
def test_params_string(text: str, total: float, dense: float) -> None:
    parsed = parse_params(text)
    assert parsed is not None
    assert parsed.total == pytest.approx(total)
    assert parsed.dense_equivalent == pytest.approx(dense)


@pytest.mark.parametrize("text", [None, "", "unknown", "7", "B7", "7 GB RAM"])
def test_params_string_without_a_figure(text: str | None) -> None:
    assert parse_params(text) is None


# Real LM Studio / Hugging Face model keys: (key, total params, dense-equivalent, quantization)
KEYS: list[tuple[str, float | None, float | None, str | None]] = [
    ("qwen2.5-7b-instruct", 7 * B, 7 * B, None),
    ("llama-3.1-8b", 8 * B, 8 * B, None),
    ("meta-llama-3.1-8b-instruct", 8 * B, 8 * B, None),
    ("phi-3-mini", None, None, None),
    ("phi-4", None, None, None),
    ("mistral-7b-instruct-v0.3", 7 * B, 7 * B, None),
    ("mixtral-8x7b-instruct-v0.1", 8 * 7 * 0.82 * B, 7 * B, None),
    ("qwen3-30b-a3b-2507", 30 * B, 3 * B, None),
    ("qwen/qwen3-235b-a22b", 235 * B, 22 * B, None),
    ("qwen3-0.6b", 0.6 * B, 0.6 * B, None),
    ("qwen/qwen3-4b-2507", 4 * B, 4 * B, None),
    ("google/gemma-3-12b", 12 * B, 12 * B, None),
    ("gemma-3-270m-it", 0.27 * B, 0.27 * B, None),
    ("gemma-3n-e4b-it", 4 * 1.9 * B, 4 * B, None),
    ("deepseek-r1-distill-qwen-14b", 14 * B, 14 * B, None),
    ("openai/gpt-oss-20b", 20 * B, 20 * B, None),
    ("smollm2-135m-instruct", 0.135 * B, 0.135 * B, None),
    ("lfm2-1.2b", 1.2 * B, 1.2 * B, None),
    ("glm-4.5-air", None, None, None),
    ("mistral-small-3.2-24b-instruct-2506", 24 * B, 24 * B, None),
    ("llama-3.2-3b-instruct-q4_k_m", 3 * B, 3 * B, "Q4_K_M"),
    ("qwen2.5-coder-32b-instruct@q8_0", 32 * B, 32 * B, "Q8_0"),
    ("mlx-community/qwen3-4b-4bit", 4 * B, 4 * B, "4bit"),
    ("unsloth/qwen3-8b-ud-q4_k_xl-gguf", 8 * B, 8 * B, "Q4_K_XL"),
    ("bartowski/llama-3.3-70b-instruct-iq3_xxs", 70 * B, 70 * B, "IQ3_XXS"),
    ("text-embedding-nomic-embed-text-v1.5", None, None, None),
]


@pytest.mark.parametrize(("key", "total", "dense", "quant"), KEYS)
def test_model_keys(key: str, total: float | None, dense: float | None, quant: str | None) -> None:
    parsed = params_from_key(key)
    if total is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert parsed.total == pytest.approx(total)
        assert parsed.dense_equivalent == pytest.approx(dense)
    assert quant_from_key(key) == quant


def test_key_table_is_big_enough() -> None:
    assert len(KEYS) >= 20


@pytest.mark.parametrize(
    ("name", "nominal", "bits"),
    [
        ("Q4_K_M", 4, 4.85),
        ("q8_0", None, 8.5),
        ("F16", 16, 16.0),
        ("BF16", None, 16.0),
        ("IQ4_XS", None, 4.3),
        ("MXFP4", None, 4.25),
        ("UD-Q4_K_XL", None, 4.8),  # unlisted: family 4 + typical scales
        ("IQ4_KS", None, 4.4),
        ("4bit", 4, 4.5),  # MLX: fp16 scale and bias per 64 weights
        ("8bit", None, 8.5),
        ("mystery", 4, 4.5),  # unknown name: LM Studio's nominal bits + scales
        (None, 8, 8.5),
        (None, 16, 16.0),
        (None, None, None),
        ("mystery", None, None),
    ],
)
def test_bits_per_weight(name: str | None, nominal: float | None, bits: float | None) -> None:
    assert bits_per_weight(name, nominal) == (pytest.approx(bits) if bits else None)


@pytest.mark.parametrize(
    ("dense_b", "real_bytes_per_token"),
    [
        (1, 2 * 16 * 8 * 64 * 2),  # Llama 3.2 1B
        (8, 2 * 32 * 8 * 128 * 2),  # Llama 3.1 8B
        (14, 2 * 40 * 8 * 128 * 2),  # Qwen3 14B
        (32, 2 * 64 * 8 * 128 * 2),  # Qwen3 32B
        (70, 2 * 80 * 8 * 128 * 2),  # Llama 3.1 70B
        (3, 2 * 48 * 4 * 128 * 2),  # Qwen3 30B-A3B (3B active)
    ],
)
def test_rule_of_thumb_is_within_2x_of_real_gqa_models(
    dense_b: float, real_bytes_per_token: int
) -> None:
    guess = kv_bytes_per_token_rule_of_thumb(ParamCount(dense_b * B, dense_b * B))
    assert real_bytes_per_token / 2 <= guess <= real_bytes_per_token * 2
