"""Write small synthetic GGUF files: a valid header, real architectures' metadata,
tensor infos, and little or no tensor data.

Used by the memory tests, the daemon's end-to-end tests and the emulator's
catalog. Nothing here imports lmkeeperd, so the writer cannot share a bug with
the reader it tests.

    from tests.gguf_synth import write_gguf, ARCHITECTURES
    path = write_gguf(tmp_path / "m.gguf", ARCHITECTURES["qwen3-8b"].metadata())

Values are typed from their Python type (bool → BOOL, int → UINT32, or INT64 /
UINT64 when out of range, float → FLOAT32, str → STRING, list/tuple → ARRAY of
the first element's type); wrap a value in `Typed` to force a type.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
_FORMATS = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "?",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}
GGML_TYPE_F32 = 0
ALIGNMENT = 32


@dataclass(frozen=True)
class Typed:
    """A value with an explicit GGUF type; for arrays, `type` is the element type."""

    type: int
    value: Any
    array: bool = False


def _token(i: int) -> str:
    return f"tok{i}"


@dataclass(frozen=True)
class StringArray:
    """`count` strings made by `make(i)`, written without building a list first."""

    count: int
    make: Callable[[int], str] = _token


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int = GGML_TYPE_F32


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return UINT32
        return INT64 if value < 0 else UINT64
    if isinstance(value, float):
        return FLOAT32
    if isinstance(value, str | bytes):
        return STRING
    if isinstance(value, list | tuple | StringArray):
        return ARRAY
    raise TypeError(f"cannot infer a GGUF type for {value!r}")


def _scalar(value_type: int, value: Any) -> bytes:
    if value_type == STRING:
        return _string(value)
    return struct.pack("<" + _FORMATS[value_type], value)


def _value(value: Any) -> bytes:
    """Type code + encoded value."""
    if isinstance(value, Typed):
        if value.array:
            items = list(value.value)
            body = b"".join(_scalar(value.type, item) for item in items)
            return struct.pack("<IIQ", ARRAY, value.type, len(items)) + body
        return struct.pack("<I", value.type) + _scalar(value.type, value.value)
    value_type = _infer_type(value)
    if value_type != ARRAY:
        return struct.pack("<I", value_type) + _scalar(value_type, value)
    if isinstance(value, StringArray):
        out = io.BytesIO()
        out.write(struct.pack("<IIQ", ARRAY, STRING, value.count))
        for i in range(value.count):
            out.write(_string(value.make(i)))
        return out.getvalue()
    items = list(value)
    if items and isinstance(items[0], list | tuple):
        body = b"".join(_value(item)[4:] for item in items)
        return struct.pack("<IIQ", ARRAY, ARRAY, len(items)) + body
    item_type = _infer_type(items[0]) if items else UINT32
    if item_type == UINT32 and any(isinstance(i, int) and i < 0 for i in items):
        item_type = INT32
    body = b"".join(_scalar(item_type, item) for item in items)
    return struct.pack("<IIQ", ARRAY, item_type, len(items)) + body


def gguf_bytes(
    metadata: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    tensors: Sequence[Tensor] = (),
    version: int = 3,
    tensor_data: bool = False,
) -> bytes:
    """A whole GGUF file as bytes. `tensor_data` writes zeroed F32 data for the tensors."""
    pairs = list(metadata.items()) if isinstance(metadata, Mapping) else list(metadata)
    out = io.BytesIO()
    out.write(b"GGUF")
    out.write(struct.pack("<IQQ", version, len(tensors), len(pairs)))
    for key, value in pairs:
        out.write(_string(key))
        out.write(_value(value))
    offset = 0
    for tensor in tensors:
        out.write(_string(tensor.name))
        out.write(struct.pack("<I", len(tensor.shape)))
        out.write(struct.pack(f"<{len(tensor.shape)}Q", *tensor.shape))
        out.write(struct.pack("<IQ", tensor.ggml_type, offset))
        size = 4 * _product(tensor.shape)
        offset += size + (-size % ALIGNMENT)
    if tensor_data and tensors:
        out.write(b"\0" * (-out.tell() % ALIGNMENT))
        out.write(b"\0" * offset)
    return out.getvalue()


def write_gguf(
    path: Path,
    metadata: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    tensors: Sequence[Tensor] = (),
    version: int = 3,
    tensor_data: bool = False,
    pad_to: int = 0,
) -> Path:
    """Write a GGUF file; `pad_to` appends zeros so the file has that size on disk
    (sparse where the filesystem allows), for tests that match files by size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gguf_bytes(metadata, tensors=tensors, version=version, tensor_data=tensor_data)
    with path.open("wb") as f:
        f.write(data)
        if pad_to > len(data):
            f.truncate(pad_to)
    return path


def _product(shape: Sequence[int]) -> int:
    result = 1
    for n in shape:
        result *= n
    return result


@dataclass(frozen=True)
class Architecture:
    """One real model's published attention geometry, and how its GGUF says it.

    `bytes_per_token` is derived by hand in the docstring of each entry below
    (f16 K and V, the full-attention layers only) so tests compare the estimator
    against arithmetic done outside it.
    """

    arch: str
    fields: Mapping[str, Any]
    bytes_per_token: int
    general: Mapping[str, Any] = field(default_factory=dict)
    vocab: int = 0

    def metadata(self, *, vocab: int | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"general.architecture": self.arch}
        meta.update(self.general)
        meta.update({f"{self.arch}.{k}": v for k, v in self.fields.items()})
        tokens = self.vocab if vocab is None else vocab
        if tokens:
            meta["tokenizer.ggml.model"] = "gpt2"
            meta["tokenizer.ggml.tokens"] = StringArray(tokens)
        return meta

    def tensors(self) -> list[Tensor]:
        """A token embedding and one tiny tensor per block: enough for tensor_count."""
        blocks = int(self.fields["block_count"])
        out = [Tensor("token_embd.weight", (8, 4))]
        out += [Tensor(f"blk.{i}.attn_norm.weight", (4,)) for i in range(blocks)]
        return out


ARCHITECTURES: dict[str, Architecture] = {
    # Llama 3.1 8B (meta-llama config.json): 32 layers, 32 heads, 8 KV heads,
    # hidden 4096 → head 128. 2 (K,V) × 32 × 8 × 128 × 2 B = 131072 B/token.
    "llama-3.1-8b": Architecture(
        "llama",
        {
            "block_count": 32,
            "context_length": 131072,
            "embedding_length": 4096,
            "feed_forward_length": 14336,
            "attention.head_count": 32,
            "attention.head_count_kv": 8,
            "rope.dimension_count": 128,
            "vocab_size": 128256,
        },
        131072,
        {"general.name": "Meta Llama 3.1 8B Instruct", "general.file_type": 15},
    ),
    # Qwen3 8B: 36 layers, 32 heads, 8 KV heads, head_dim 128 (explicit key_length).
    # 2 × 36 × 8 × 128 × 2 = 147456 B/token.
    "qwen3-8b": Architecture(
        "qwen3",
        {
            "block_count": 36,
            "context_length": 40960,
            "embedding_length": 4096,
            "attention.head_count": 32,
            "attention.head_count_kv": 8,
            "attention.key_length": 128,
            "attention.value_length": 128,
        },
        147456,
        {"general.name": "Qwen3 8B"},
    ),
    # Qwen3 4B: 36 layers, hidden 2560 with 32 heads of 128 (head_dim is not
    # hidden/heads = 80: the key_length field matters). 2 × 36 × 8 × 128 × 2 = 147456.
    "qwen3-4b": Architecture(
        "qwen3",
        {
            "block_count": 36,
            "context_length": 262144,
            "embedding_length": 2560,
            "attention.head_count": 32,
            "attention.head_count_kv": 8,
            "attention.key_length": 128,
            "attention.value_length": 128,
        },
        147456,
        {"general.name": "Qwen3 4B Instruct 2507"},
    ),
    # Qwen2.5 7B: 28 layers, 28 heads, 4 KV heads, hidden 3584 → head 128 (no
    # key_length field: derived from embedding_length / head_count).
    # 2 × 28 × 4 × 128 × 2 = 57344 B/token.
    "qwen2.5-7b": Architecture(
        "qwen2",
        {
            "block_count": 28,
            "context_length": 32768,
            "embedding_length": 3584,
            "attention.head_count": 28,
            "attention.head_count_kv": 4,
        },
        57344,
    ),
    # Mistral 7B v0.3: 32 layers, 32 heads, 8 KV heads, hidden 4096 → head 128.
    # 2 × 32 × 8 × 128 × 2 = 131072 B/token.
    "mistral-7b-v0.3": Architecture(
        "llama",
        {
            "block_count": 32,
            "context_length": 32768,
            "embedding_length": 4096,
            "attention.head_count": 32,
            "attention.head_count_kv": 8,
        },
        131072,
    ),
    # Gemma 3 12B: 48 layers, 16 heads, 8 KV heads, head_dim 256, sliding window
    # 1024 on 5 of every 6 layers (llama.cpp set_swa_pattern(6); not in the GGUF).
    # Full-attention layers: 48/6 = 8. Per token of context on those:
    # 2 × 8 × 8 × 256 × 2 = 65536 B; every layer if all were full: 393216 B.
    "gemma-3-12b": Architecture(
        "gemma3",
        {
            "block_count": 48,
            "context_length": 131072,
            "embedding_length": 3840,
            "attention.head_count": 16,
            "attention.head_count_kv": 8,
            "attention.key_length": 256,
            "attention.value_length": 256,
            "attention.sliding_window": 1024,
        },
        65536,
    ),
    # Qwen3 30B-A3B (MoE, 128 experts, 8 used): attention is dense: 48 layers,
    # 32 heads, 4 KV heads, head 128. Experts do not change the KV cache.
    # 2 × 48 × 4 × 128 × 2 = 98304 B/token.
    "qwen3-30b-a3b": Architecture(
        "qwen3moe",
        {
            "block_count": 48,
            "context_length": 262144,
            "embedding_length": 2048,
            "attention.head_count": 32,
            "attention.head_count_kv": 4,
            "attention.key_length": 128,
            "attention.value_length": 128,
            "expert_count": 128,
            "expert_used_count": 8,
        },
        98304,
    ),
    # DeepSeek-V2-Lite as converted for llama.cpp's MLA (key_length_mla present):
    # the cache holds the compressed latent, kv_lora_rank 512 + rope 64 = 576
    # elements per token per layer, as one "KV head" of key_length 576 and no
    # separate V. 27 × 576 × 2 B = 31104 B/token.
    "deepseek-v2-lite": Architecture(
        "deepseek2",
        {
            "block_count": 27,
            "context_length": 163840,
            "embedding_length": 2048,
            "attention.head_count": 16,
            "attention.head_count_kv": 1,
            "attention.key_length": 576,
            "attention.value_length": 512,
            "attention.key_length_mla": 192,
            "attention.value_length_mla": 128,
            "attention.kv_lora_rank": 512,
            "rope.dimension_count": 64,
            "expert_count": 64,
            "expert_used_count": 6,
            "leading_dense_block_count": 1,
        },
        31104,
    ),
    # OpenELM 270M: KV heads differ per layer (an ARRAY in the GGUF):
    # [3]*5 + [4]*7 + [5]*4 = 63 heads in all, head 64.
    # 2 × 63 × 64 × 2 = 16128 B/token.
    "openelm-270m": Architecture(
        "openelm",
        {
            "block_count": 16,
            "context_length": 2048,
            "embedding_length": 1280,
            "attention.head_count": [12] * 5 + [16] * 7 + [20] * 4,
            "attention.head_count_kv": [3] * 5 + [4] * 7 + [5] * 4,
            "attention.key_length": 64,
            "attention.value_length": 64,
        },
        16128,
    ),
}


def write_lmstudio_model(
    models_dir: Path,
    publisher: str,
    repo: str,
    architecture: str,
    *,
    quantization: str = "Q4_K_M",
    vocab: int = 0,
    size: int = 0,
) -> Path:
    """A model laid out as LM Studio stores it:
    `<models_dir>/<publisher>/<repo>/<repo minus -GGUF>-<quantization>.gguf`.

    `architecture` is a key of ARCHITECTURES; `size` pads the file (sparsely) so
    it can stand for a model of that size on disk.
    """
    arch = ARCHITECTURES[architecture]
    stem = repo[: -len("-GGUF")] if repo.upper().endswith("-GGUF") else repo
    path = models_dir / publisher / repo / f"{stem}-{quantization}.gguf"
    return write_gguf(path, arch.metadata(vocab=vocab), tensors=arch.tensors(), pad_to=size)
