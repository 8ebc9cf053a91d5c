"""How big a model's KV cache is, from its attention geometry.

The cache holds, for every layer with attention and every token of context,
one key and one value vector per KV head:

    bytes = Σ_layers kv_heads(l) × (key_length(l) + value_length(l)) × cells(l) × bytes_per_element

which is 2 × layers × kv_heads × head_dim × context × 2 for the common case of
equal key/value heads in f16. `cells(l)` is the context length, except on
sliding-window layers, where llama.cpp keeps only
`pad256(min(context, window × parallel + ubatch))` cells (llama-kv-cache-iswa.cpp,
unless LM Studio turns on `swa_full`, which we assume it does not).

Architecture knowledge, as llama.cpp's loader applies it (llama-model.cpp):
- `head_count_kv` defaults to `head_count`; either may be a per-layer array. A
  layer with 0 KV heads is recurrent (Mamba/SSM) or has no attention: no cache.
- `key_length`/`value_length` default to `embedding_length / head_count`.
- Sliding window: `<arch>.attention.sliding_window_pattern` (per-layer bools or a
  period) when present; otherwise the pattern compiled into llama.cpp for the
  architecture (gemma2 1:1, gemma3 5:1, gemma3n 4:1, cohere2 3:1, gpt-oss 1:1,
  llama4 3:1 chunked at 8192). Other architectures with a `sliding_window` value
  (Mistral v0.1, Phi-3, Qwen2) run full attention in llama.cpp: full context.
- MLA (DeepSeek V2/V3, Kimi K2 …): GGUFs converted for MLA carry
  `attention.key_length_mla`, `head_count_kv = 1` and `key_length =
  kv_lora_rank + rope_dim` (576): the cache holds that latent only, and current
  llama.cpp stores no separate V for it (older runtimes also stored a 512-wide V,
  ~1.9× more). Older DeepSeek conversions without `key_length_mla` run without
  MLA and are computed from their full K/V heads, as llama.cpp does.
- `shared_kv_layers` (gemma3n, gemma4): the last N layers reuse earlier caches.
- `full_attention_interval` (qwen3next): only every Nth layer has attention.
- Expert count (MoE) does not change the cache: attention is dense.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmkeeperd.memory.gguf import SkippedArray

# llama.cpp's default micro-batch; the SWA cache keeps this many extra cells.
DEFAULT_UBATCH = 512
_SWA_PAD = 256

# (pattern period, default window, chunked) compiled into llama.cpp per architecture,
# used only when the GGUF does not carry `sliding_window_pattern` itself. A period
# of n means layers where il % n < n - 1 slide (set_swa_pattern in llama-hparams.cpp).
_BUILT_IN_SWA: dict[str, tuple[int, int | None, bool]] = {
    "gemma2": (2, 4096, False),
    "gemma3": (6, None, False),
    "gemma3n": (5, None, False),
    "cohere2": (4, None, False),
    "gpt-oss": (2, None, False),
    "llama4": (4, 8192, True),
}
# Architectures with no attention at all: the state is a fixed-size recurrent one.
_RECURRENT_ONLY = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})


class GeometryError(ValueError):
    """The metadata lacks what a KV estimate needs (names the missing key)."""


@dataclass(frozen=True, slots=True)
class KVGeometry:
    """Per-layer attention shape: everything the KV cache size depends on."""

    architecture: str
    # One entry per layer; 0 means that layer keeps no cache of its own.
    kv_heads: tuple[int, ...]
    key_length: tuple[int, ...]
    value_length: tuple[int, ...]
    sliding: tuple[bool, ...]
    sliding_window: int | None = None
    trained_context: int | None = None
    head_count: int | None = None
    embedding_length: int | None = None
    vocab_size: int | None = None
    expert_count: int | None = None
    is_mla: bool = False
    notes: tuple[str, ...] = ()

    @property
    def layer_count(self) -> int:
        return len(self.kv_heads)

    def bytes_per_token(self, bytes_per_element: float = 2.0) -> int:
        """Cache bytes per token of context on the full-attention layers.

        Sliding layers are excluded: they cost a fixed amount once the context
        is longer than their window (see `kv_cache_bytes`).
        """
        elements = sum(
            h * (k + v)
            for h, k, v, s in zip(
                self.kv_heads, self.key_length, self.value_length, self.sliding, strict=True
            )
            if not s
        )
        return round(elements * bytes_per_element)

    def kv_cache_bytes(
        self,
        context: int,
        *,
        bytes_per_element: float = 2.0,
        parallel: int = 1,
        ubatch: int = DEFAULT_UBATCH,
    ) -> int:
        if context <= 0:
            return 0
        window_cells = context
        if self.sliding_window:
            wanted = min(context, self.sliding_window * max(parallel, 1) + ubatch)
            window_cells = -(-wanted // _SWA_PAD) * _SWA_PAD
        total = 0.0
        for heads, key, value, sliding in zip(
            self.kv_heads, self.key_length, self.value_length, self.sliding, strict=True
        ):
            cells = window_cells if sliding else context
            total += heads * (key + value) * cells * bytes_per_element
        return round(total)


def geometry_from_gguf(metadata: Mapping[str, Any]) -> KVGeometry:
    """Attention geometry from a GGUF header's metadata (see the module docstring)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GeometryError("general.architecture is missing")

    def get(name: str) -> Any:
        return metadata.get(f"{arch}.{name}")

    notes: list[str] = []
    layers = _positive_int(get("block_count"))
    if layers is None:
        raise GeometryError(f"{arch}.block_count is missing")
    vocab = _positive_int(get("vocab_size"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(tokens, SkippedArray):
        vocab = tokens.length
    elif vocab is None and isinstance(tokens, tuple):
        vocab = len(tokens)
    trained_context = _positive_int(get("context_length"))
    embedding = _positive_int(get("embedding_length"))
    expert_count = _positive_int(get("expert_count"))
    if arch in _RECURRENT_ONLY:
        zeros = (0,) * layers
        return KVGeometry(
            architecture=arch,
            kv_heads=zeros,
            key_length=zeros,
            value_length=zeros,
            sliding=(False,) * layers,
            trained_context=trained_context,
            embedding_length=embedding,
            vocab_size=vocab,
            expert_count=expert_count,
            notes=("recurrent model: fixed-size state, no KV cache",),
        )

    head_count = _per_layer(get("attention.head_count"), layers, f"{arch}.attention.head_count")
    kv_raw = get("attention.head_count_kv")
    kv_heads = _per_layer(kv_raw, layers, f"{arch}.attention.head_count_kv") or head_count
    if kv_heads is None:
        raise GeometryError(f"{arch}.attention.head_count and head_count_kv are missing")

    first_heads = next((h for h in head_count or () if h > 0), None)
    derived = embedding // first_heads if embedding and first_heads else None
    key_length = _positive_int(get("attention.key_length")) or derived
    value_length = _positive_int(get("attention.value_length")) or derived
    if key_length is None or value_length is None:
        raise GeometryError(
            f"{arch}.attention.key_length is missing and cannot be derived "
            f"from {arch}.embedding_length / {arch}.attention.head_count"
        )

    is_mla = get("attention.key_length_mla") is not None and get("attention.kv_lora_rank")
    if is_mla:
        lora = _positive_int(get("attention.kv_lora_rank")) or 0
        rope = _positive_int(get("rope.dimension_count")) or 0
        if kv_raw is None or get("attention.key_length") is None:
            kv_heads = (1,) * layers
            key_length = lora + rope
        value_length = 0
        notes.append(
            "MLA: caches the compressed latent only "
            "(older llama.cpp runtimes also keep a V cache, ~1.9x this)"
        )

    key_lengths = [key_length] * layers
    value_lengths = [value_length] * layers
    heads = list(kv_heads)

    interval = _positive_int(get("full_attention_interval"))
    if interval:
        for il in range(layers):
            if (il + 1) % interval:
                heads[il] = 0
        notes.append(f"hybrid: attention on every {interval}th layer, recurrent state not counted")
    elif any(h == 0 for h in heads):
        notes.append("layers without KV heads are recurrent: their fixed-size state is not counted")

    shared = _positive_int(get("attention.shared_kv_layers"))
    if shared and shared < layers:
        for il in range(layers - shared, layers):
            heads[il] = 0
        notes.append(f"last {shared} layers reuse earlier layers' cache")

    sliding, window = _sliding_layers(arch, get, layers, notes)
    key_swa = _positive_int(get("attention.key_length_swa"))
    value_swa = _positive_int(get("attention.value_length_swa"))
    for il in range(layers):
        if sliding[il]:
            key_lengths[il] = key_swa or key_lengths[il]
            value_lengths[il] = value_swa or value_lengths[il]

    return KVGeometry(
        architecture=arch,
        kv_heads=tuple(heads),
        key_length=tuple(key_lengths),
        value_length=tuple(value_lengths),
        sliding=tuple(sliding),
        sliding_window=window,
        trained_context=trained_context,
        head_count=first_heads,
        embedding_length=embedding,
        vocab_size=vocab,
        expert_count=expert_count,
        is_mla=bool(is_mla),
        notes=tuple(notes),
    )


def _sliding_layers(
    arch: str, get: Callable[[str], Any], layers: int, notes: list[str]
) -> tuple[list[bool], int | None]:
    window = _positive_int(get("attention.sliding_window"))
    pattern = get("attention.sliding_window_pattern")
    built_in = _BUILT_IN_SWA.get(arch)
    if isinstance(pattern, tuple) and len(pattern) == layers:
        sliding = [bool(p) for p in pattern]
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
        sliding = [il % pattern < pattern - 1 for il in range(layers)]
    elif built_in is not None:
        period, default_window, chunked = built_in
        sliding = [il % period < period - 1 for il in range(layers)]
        window = window or default_window
        kind = "chunked attention" if chunked else "sliding window"
        notes.append(
            f"{kind} on {sliding.count(True)} of {layers} layers "
            f"(llama.cpp's built-in pattern for {arch})"
        )
    else:
        if window:
            notes.append(
                f"{arch} declares a sliding window but llama.cpp runs full attention: full context"
            )
        return [False] * layers, None
    if not window:
        notes.append("sliding-window size unknown: those layers counted at full context")
        return [False] * layers, None
    return sliding, window


def geometry_from_hf_config(config: Mapping[str, Any]) -> KVGeometry:
    """Attention geometry from a Hugging Face `config.json` (MLX model folders)."""
    text = config.get("text_config")
    if isinstance(text, Mapping):
        # Vision-language models nest the language model's settings.
        config = {**config, **text}
    arch = str(config.get("model_type") or "unknown")
    layers = _positive_int(config.get("num_hidden_layers"))
    heads = _positive_int(config.get("num_attention_heads"))
    if layers is None or heads is None:
        raise GeometryError("config.json lacks num_hidden_layers or num_attention_heads")
    kv = _positive_int(config.get("num_key_value_heads")) or heads
    hidden = _positive_int(config.get("hidden_size"))
    head_dim = _positive_int(config.get("head_dim")) or (hidden // heads if hidden else None)
    if head_dim is None:
        raise GeometryError("config.json lacks head_dim and hidden_size")
    notes = ["MLX grows its cache as tokens arrive: this is the size at a full context"]
    lora = _positive_int(config.get("kv_lora_rank"))
    if lora:
        # mlx-lm's DeepSeek V2/V3 caches decompressed keys and values per head.
        key = (_positive_int(config.get("qk_nope_head_dim")) or 0) + (
            _positive_int(config.get("qk_rope_head_dim")) or 0
        )
        value = _positive_int(config.get("v_head_dim")) or head_dim
        kv, key_len, value_len = heads, key or head_dim, value
        notes.append("MLA in MLX: full per-head keys and values are cached")
    else:
        key_len = value_len = head_dim
    window = _positive_int(config.get("sliding_window"))
    layer_types = config.get("layer_types")
    sliding = [False] * layers
    if isinstance(layer_types, Sequence) and len(layer_types) == layers:
        sliding = [t == "sliding_attention" for t in layer_types]
    elif window and _positive_int(config.get("sliding_window_pattern")):
        period = _positive_int(config.get("sliding_window_pattern")) or 1
        sliding = [il % period < period - 1 for il in range(layers)]
    if not window or not any(sliding):
        sliding, window = [False] * layers, None
    return KVGeometry(
        architecture=arch,
        kv_heads=(kv,) * layers,
        key_length=(key_len,) * layers,
        value_length=(value_len,) * layers,
        sliding=tuple(sliding),
        sliding_window=window,
        trained_context=_positive_int(config.get("max_position_embeddings")),
        head_count=heads,
        embedding_length=hidden,
        vocab_size=_positive_int(config.get("vocab_size")),
        expert_count=_positive_int(config.get("num_experts") or config.get("n_routed_experts")),
        is_mla=bool(lora),
        notes=tuple(notes),
    )


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    as_int = int(value)
    return as_int if as_int > 0 and as_int == value else None


def _per_layer(value: Any, layers: int, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        items = [_non_negative_int(v, key) for v in value]
        if len(items) < layers:
            raise GeometryError(f"{key} has {len(items)} entries for {layers} layers")
        return tuple(items[:layers])
    return (_non_negative_int(value, key),) * layers


def _non_negative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GeometryError(f"{key} holds {value!r}, not a count")
    return value
