"""What a model's name and the server's labels say about its size.

Used only when no model file can be read: parameter counts from
`params_string` ("7B", "0.5B", "235B-A22B", "8x7B", "270M", "E4B") or from the
key ("qwen2.5-7b-instruct" → 7B), and effective bits per weight from the
quantization name ("Q4_K_M" → 4.85). Everything here is an approximation, and
the estimate that uses it says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Effective bits per weight of whole GGUF files, block scales and the
# higher-precision embedding/output tensors included; from llama.cpp's quantize
# table for Llama-3-8B (file size × 8 / 8.03e9 parameters), rounded.
GGUF_BITS: dict[str, float] = {
    "f32": 32.0,
    "f16": 16.0,
    "bf16": 16.0,
    "q8_0": 8.5,
    "q6_k": 6.6,
    "q5_k_m": 5.7,
    "q5_k_s": 5.55,
    "q5_1": 6.0,
    "q5_0": 5.5,
    "q4_k_m": 4.85,
    "q4_k_s": 4.6,
    "q4_1": 5.0,
    "q4_0": 4.55,
    "iq4_nl": 4.5,
    "iq4_xs": 4.3,
    "mxfp4": 4.25,
    "q3_k_l": 4.3,
    "q3_k_m": 3.9,
    "q3_k_s": 3.5,
    "iq3_m": 3.7,
    "iq3_s": 3.5,
    "iq3_xs": 3.3,
    "iq3_xxs": 3.1,
    "q2_k": 3.0,
    "q2_k_s": 2.7,
    "iq2_m": 2.7,
    "iq2_s": 2.5,
    "iq2_xs": 2.3,
    "iq2_xxs": 2.1,
    "iq1_m": 1.8,
    "iq1_s": 1.6,
    "tq2_0": 2.1,
    "tq1_0": 1.7,
}
# MLX affine quantization stores a 16-bit scale and bias per group of 64 weights.
_MLX_GROUP_OVERHEAD = 0.5

# Smaller quantizations to suggest, largest first.
GGUF_LADDER: tuple[str, ...] = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ3_XXS", "Q2_K")
MLX_LADDER: tuple[str, ...] = ("8bit", "6bit", "5bit", "4bit", "3bit")

# Mixtral-style "8x7B": attention and embeddings are shared by the experts, so
# the total is below 8 × 7B (Mixtral 8x7B is 46.7B = 0.83 × 56B; 8x22B 141B = 0.80 × 176B).
_SHARED_EXPERT_FACTOR = 0.82
# Gemma 3n "E4B": 4B effective, about 7.9B stored (E2B: 5.4B).
_EFFECTIVE_TO_STORED = 1.9

_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
_PARAMS_STRING = re.compile(
    r"^\s*(?:(?P<experts>\d+)\s*x\s*)?(?P<effective>e)?(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmbt])"
    r"(?:\s*[-_/ ]\s*a(?P<active>\d+(?:\.\d+)?)\s*(?P<active_unit>[kmbt]))?\s*$",
    re.IGNORECASE,
)
_KEY_MIXTURE = re.compile(r"(?<![a-z0-9.])(\d+)x(\d+(?:\.\d+)?)([mb])(?![a-z0-9])")
_KEY_SIZE = re.compile(r"(?<![a-z0-9.])(e?)(\d+(?:\.\d+)?)([mb])(?![a-z0-9])")
_KEY_ACTIVE = re.compile(r"(?<![a-z0-9.])a(\d+(?:\.\d+)?)([mb])(?![a-z0-9])")
_KEY_QUANT = re.compile(
    r"(?<![a-z0-9])(i?q\d(?:_(?:[a-z]{1,3}|\d))*|bf16|f16|f32|mxfp4|\d+bit)(?![a-z0-9])"
)
_MLX_BITS = re.compile(r"^(\d+)[-_ ]?bits?$")


@dataclass(frozen=True, slots=True)
class ParamCount:
    total: float
    # The size of a dense model with the same attention: the active parameters of
    # an "A3B" MoE, one expert of an "8x7B". The KV rule of thumb scales with it.
    dense_equivalent: float


def parse_params(text: str | None) -> ParamCount | None:
    """Parameters in an LM Studio `params_string`, or None when it has no figure."""
    if not text:
        return None
    match = _PARAMS_STRING.match(text)
    if match is None:
        return None
    number = float(match.group("number")) * _UNITS[match.group("unit").lower()]
    if match.group("experts"):
        experts = int(match.group("experts"))
        return ParamCount(experts * number * _SHARED_EXPERT_FACTOR, number)
    if match.group("effective"):
        return ParamCount(number * _EFFECTIVE_TO_STORED, number)
    if match.group("active"):
        active = float(match.group("active")) * _UNITS[match.group("active_unit").lower()]
        return ParamCount(number, active)
    return ParamCount(number, number)


def params_from_key(key: str) -> ParamCount | None:
    """Parameters guessed from a model key such as "qwen2.5-7b-instruct"."""
    name = key.lower()
    mixture = _KEY_MIXTURE.search(name)
    if mixture:
        return parse_params(f"{mixture.group(1)}x{mixture.group(2)}{mixture.group(3)}")
    sizes = [
        (float(n) * _UNITS[u] * (_EFFECTIVE_TO_STORED if e else 1.0), float(n) * _UNITS[u])
        for e, n, u in _KEY_SIZE.findall(name)
    ]
    if not sizes:
        return None
    total, dense = max(sizes)
    active = _KEY_ACTIVE.search(name)
    if active:
        dense = float(active.group(1)) * _UNITS[active.group(2)]
    return ParamCount(total, dense)


def quant_from_key(key: str) -> str | None:
    """A quantization named in a key ("…-q4_k_m", "…@q8_0", "…-4bit"), upper-cased."""
    match = _KEY_QUANT.search(key.lower().replace("-", "_").replace("@", "_"))
    return match.group(1).upper().replace("BIT", "bit") if match else None


def bits_per_weight(name: str | None, nominal: float | None = None) -> float | None:
    """Effective bits per weight for a quantization name, else from LM Studio's
    nominal `bits_per_weight` (which says 4 for Q4_K_M), else None."""
    if name:
        lowered = name.strip().lower().replace("-", "_")
        lowered = lowered.removeprefix("ud_")
        if lowered in GGUF_BITS:
            return GGUF_BITS[lowered]
        mlx = _MLX_BITS.match(lowered)
        if mlx:
            return int(mlx.group(1)) + _MLX_GROUP_OVERHEAD
        family = re.match(r"^(i?)q(\d)(?:_|$)", lowered)
        if family:
            # Unlisted variants (Q4_K_XL, IQ4_KS…): the family's bits plus typical scales.
            return int(family.group(2)) + (0.4 if family.group(1) else 0.8)
    if nominal and nominal > 0:
        return float(nominal) + (_MLX_GROUP_OVERHEAD if nominal < 16 else 0.0)
    return None


def kv_bytes_per_token_rule_of_thumb(params: ParamCount, bytes_per_element: float = 2.0) -> int:
    """KV bytes per token when the model's attention shape is unknown.

    48 KiB × sqrt(dense-equivalent billions) at f16: fitted on GQA models
    (Llama 3.2 1B 32 KiB, Qwen3 4B 144 KiB, Llama 3.1 8B 128 KiB, Qwen3 14B 160 KiB,
    Qwen3 32B 256 KiB, Llama 3.1 70B 320 KiB, Qwen3 30B-A3B 96 KiB). It overshoots
    models with few KV heads (Qwen2.5 7B: 56 KiB) and undershoots old full-head
    models (Llama 2 7B: 512 KiB), hence "low confidence".
    """
    billions = max(params.dense_equivalent / 1e9, 0.1)
    return round(48 * 1024 * math.sqrt(billions) * bytes_per_element / 2.0)
