"""What loading a model will take: weights + KV cache + overhead, each reported.

Sources, best first (`Estimate.source`):
- "gguf_header": the model's GGUF was found in the models folder and its header
  read: exact attention geometry (see kv.py). Confidence "high"; "medium" when
  the runtime may differ from our model of it (MLA, recurrent layers) or the
  file was picked among several by size.
- "model_config": an MLX folder's config.json, same geometry. "medium": MLX
  grows its cache lazily, so this is the size at a full context.
- "server_metadata": no readable file; KV from a rule of thumb scaled by the
  parameters in `params_string`. "medium" when `size_bytes` gives the weights,
  "low" when they too come from parameters × bits.
- "model_name": parameters (and maybe the quantization) guessed from the key,
  e.g. "qwen2.5-7b-instruct-q4_k_m". "low".

Weights are the server's `size_bytes` (the files on disk; llama.cpp and MLX both
map them whole), else the files' sizes, else parameters × effective bits / 8.

Context: `context_length` when the caller sets one ([model.load]), else the
context of the model's loaded instance when the server reports one, else LM
Studio's default load context (4096), capped at the model's maximum.

Overhead (a heuristic, said so in every estimate's notes):
    0.5 GB fixed (runtime, backend contexts, graph metadata)
  + ubatch × (vocab × 4 B logits + embedding × 32 B activations)   [compute buffer]
  + ubatch × context × heads × 4 B when flash attention is off      [attention scores]
with ubatch 512 (llama.cpp's default). Flash attention unknown is taken as on,
llama.cpp's "auto" default. Without a header, the compute buffer is taken as 0.3 GB.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory.gguf import GGUFError, read_gguf_header
from lmkeeperd.memory.kv import (
    DEFAULT_UBATCH,
    GeometryError,
    KVGeometry,
    geometry_from_gguf,
    geometry_from_hf_config,
)
from lmkeeperd.memory.locate import ModelFiles, default_models_dirs, find_model_files
from lmkeeperd.memory.names import (
    ParamCount,
    bits_per_weight,
    kv_bytes_per_token_rule_of_thumb,
    params_from_key,
    parse_params,
    quant_from_key,
)
from lmkeeperd.memory.sizes import to_gb

log = structlog.get_logger()

Confidence = Literal["high", "medium", "low"]
Source = Literal["gguf_header", "model_config", "server_metadata", "model_name"]

LMSTUDIO_DEFAULT_CONTEXT = 4096
FIXED_OVERHEAD_BYTES = 500_000_000
UNKNOWN_COMPUTE_BYTES = 300_000_000
_ACTIVATION_BYTES_PER_EMBEDDING = 32
_MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KVModel:
    """KV bytes as a function of context: exact geometry, or bytes per token."""

    geometry: KVGeometry | None = None
    bytes_per_token: int = 0
    bytes_per_element: float = 2.0
    parallel: int = 1

    def bytes(self, context: int) -> int:
        if self.geometry is not None:
            return self.geometry.kv_cache_bytes(
                context, bytes_per_element=self.bytes_per_element, parallel=self.parallel
            )
        return self.bytes_per_token * max(context, 0)


@dataclass(frozen=True, slots=True)
class OverheadModel:
    fixed_bytes: int = FIXED_OVERHEAD_BYTES
    compute_bytes: int = UNKNOWN_COMPUTE_BYTES
    # Attention-score scratch per token of context; 0 with flash attention.
    bytes_per_context_token: int = 0

    def bytes(self, context: int) -> int:
        return self.fixed_bytes + self.compute_bytes + self.bytes_per_context_token * context


@dataclass(frozen=True, slots=True)
class Estimate:
    model: str
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    context_length: int
    confidence: Confidence
    source: Source
    notes: tuple[str, ...] = ()
    quantization: str | None = None
    bits_per_weight: float | None = None
    format: str | None = None
    max_context_length: int | None = None
    kv_model: KVModel = field(default_factory=KVModel)
    overhead_model: OverheadModel = field(default_factory=OverheadModel)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def total_at(self, context: int, *, weights_bytes: int | None = None) -> int:
        """The total for another context (and optionally other weights)."""
        weights = self.weights_bytes if weights_bytes is None else weights_bytes
        return weights + self.kv_model.bytes(context) + self.overhead_model.bytes(context)


def estimate(
    model: ModelInfo,
    *,
    context_length: int | None = None,
    models_dir: Path | None = None,
    flash_attention: bool | None = None,
    parallel: int | None = None,
    kv_bytes_per_element: float = 2.0,
) -> Estimate | None:
    """Estimate what loading `model` takes; None when nothing at all is known
    about its size (no file, no `size_bytes`, no parameter count anywhere).

    `models_dir` None searches LM Studio's default folders. File problems
    (missing, unreadable, corrupt header) never raise: the estimate falls back
    and says why in `notes`.
    """
    notes: list[str] = []
    files = _locate(model, models_dir, notes)
    geometry: KVGeometry | None = None
    source: Source = "server_metadata"
    uncertain = False
    if files is not None:
        if files.choice:
            notes.append(
                f"{files.gguf[0].name if files.gguf else files.folder.name}: {files.choice}"
            )
            uncertain = True
        geometry, source = _read_geometry(files, notes)
        if geometry is not None:
            notes.extend(geometry.notes)
            uncertain = uncertain or geometry.is_mla or any(h == 0 for h in geometry.kv_heads)

    quant = _quant_name(model)
    bits = bits_per_weight(
        quant, model.quantization.bits_per_weight if model.quantization else None
    )
    params = parse_params(model.params_string)
    if geometry is None and params is None:
        params = params_from_key(model.key)
        if params is not None and model.size_bytes is None:
            source = "model_name"

    weights = _weights(model, files, params, bits, notes)
    if weights is None:
        return None

    context = _context(model, context_length, geometry, notes)
    max_context = model.max_context_length or (geometry.trained_context if geometry else None)
    slots = parallel if parallel and parallel > 0 else 1
    if geometry is not None:
        kv_model = KVModel(geometry, bytes_per_element=kv_bytes_per_element, parallel=slots)
    else:
        guess = params or ParamCount(weights * 8 / (bits or 4.85), weights * 8 / (bits or 4.85))
        kv_model = KVModel(
            bytes_per_token=kv_bytes_per_token_rule_of_thumb(guess, kv_bytes_per_element)
        )
        notes.append("KV cache from a rule of thumb (no model file read)")
    overhead_model = _overhead_model(model, geometry, flash_attention, notes)

    if geometry is not None:
        confidence: Confidence = "medium" if uncertain or source == "model_config" else "high"
    elif source == "server_metadata" and model.size_bytes:
        confidence = "medium"
    else:
        confidence = "low"
    result = Estimate(
        model=model.key,
        weights_bytes=weights,
        kv_cache_bytes=kv_model.bytes(context),
        overhead_bytes=overhead_model.bytes(context),
        context_length=context,
        confidence=confidence,
        source=source,
        notes=tuple(notes),
        quantization=quant,
        bits_per_weight=bits,
        format=model.format,
        max_context_length=max_context,
        kv_model=kv_model,
        overhead_model=overhead_model,
    )
    log.debug(
        "memory_estimate",
        model=model.key,
        source=source,
        confidence=confidence,
        context_length=context,
        weights_gb=to_gb(weights),
        kv_cache_gb=to_gb(result.kv_cache_bytes),
        overhead_gb=to_gb(result.overhead_bytes),
    )
    return result


def _locate(model: ModelInfo, models_dir: Path | None, notes: list[str]) -> ModelFiles | None:
    directories: Sequence[Path] = (models_dir,) if models_dir else default_models_dirs()
    for directory in directories:
        files = find_model_files(model, directory)
        if files is not None:
            return files
    if models_dir is not None and not models_dir.is_dir():
        notes.append(f"models folder {models_dir} does not exist")
    return None


def _read_geometry(files: ModelFiles, notes: list[str]) -> tuple[KVGeometry | None, Source]:
    if files.gguf:
        first = files.gguf[0]
        result = _cached_gguf_geometry(first, *_stat_key(first))
        if isinstance(result, str):
            notes.append(result)
            return None, "server_metadata"
        return result, "gguf_header"
    if files.config_json is not None:
        result = _cached_config_geometry(files.config_json, *_stat_key(files.config_json))
        if isinstance(result, str):
            notes.append(result)
            return None, "server_metadata"
        return result, "model_config"
    return None, "server_metadata"


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


# Each load re-estimates; the header of an unchanged file is read once. A
# string result is the reason the file could not be used.
@functools.lru_cache(maxsize=64)
def _cached_gguf_geometry(path: Path, size: int, mtime_ns: int) -> KVGeometry | str:
    try:
        return geometry_from_gguf(read_gguf_header(path).metadata)
    except (GGUFError, GeometryError) as exc:
        return f"could not use {path.name}: {exc}"


@functools.lru_cache(maxsize=64)
def _cached_config_geometry(path: Path, size: int, mtime_ns: int) -> KVGeometry | str:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            return f"{path}: larger than {_MAX_CONFIG_BYTES} bytes, not a model config"
        config = json.loads(raw)
        if not isinstance(config, dict):
            return f"{path}: not a JSON object"
        return geometry_from_hf_config(config)
    except (OSError, ValueError) as exc:
        return f"could not use {path}: {exc}"


def _quant_name(model: ModelInfo) -> str | None:
    _, _, variant = model.key.partition("@")
    if variant:
        return variant.upper()
    if model.quantization and model.quantization.name:
        return model.quantization.name
    return quant_from_key(model.key)


def _weights(
    model: ModelInfo,
    files: ModelFiles | None,
    params: ParamCount | None,
    bits: float | None,
    notes: list[str],
) -> int | None:
    if model.size_bytes and model.size_bytes > 0:
        return model.size_bytes
    if files is not None:
        on_disk = files.size_bytes if files.gguf else _folder_weights(files.folder)
        if on_disk > 0:
            notes.append("weights from the model files' size")
            return on_disk
    if params is not None:
        effective_bits = bits or 4.85
        if bits is None:
            notes.append("quantization unknown: assumed Q4_K_M (4.85 bits per weight)")
        notes.append(f"weights from {params.total / 1e9:.1f}B parameters × {effective_bits} bits")
        return round(params.total * effective_bits / 8)
    return None


def _folder_weights(folder: Path) -> int:
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file() and entry.name.endswith((".safetensors", ".gguf")):
                    total += entry.stat().st_size
    except OSError:
        return 0
    return total


def _context(
    model: ModelInfo, requested: int | None, geometry: KVGeometry | None, notes: list[str]
) -> int:
    maximum = model.max_context_length or (geometry.trained_context if geometry else None)
    if requested and requested > 0:
        context = requested
    else:
        loaded = [
            value
            for instance in model.loaded_instances
            if isinstance(value := instance.config.get("context_length"), int) and value > 0
        ]
        if loaded:
            context = loaded[0]
            notes.append(f"context {context} from the loaded instance")
        else:
            context = LMSTUDIO_DEFAULT_CONTEXT
            notes.append(f"no context_length configured: LM Studio's default {context} assumed")
    if maximum and context > maximum:
        notes.append(f"context {context} capped at the model's maximum {maximum}")
        context = maximum
    return context


def _overhead_model(
    model: ModelInfo, geometry: KVGeometry | None, flash_attention: bool | None, notes: list[str]
) -> OverheadModel:
    notes.append("overhead is a heuristic: 0.5 GB fixed + compute buffers")
    if geometry is None or not geometry.vocab_size or not geometry.embedding_length:
        compute = UNKNOWN_COMPUTE_BYTES
    else:
        compute = DEFAULT_UBATCH * (
            geometry.vocab_size * 4 + geometry.embedding_length * _ACTIVATION_BYTES_PER_EMBEDDING
        )
    scores = 0
    if flash_attention is False and model.format != "mlx":
        heads = geometry.head_count if geometry and geometry.head_count else 32
        scores = DEFAULT_UBATCH * heads * 4
        notes.append("flash attention off: attention scores grow with context")
    return OverheadModel(compute_bytes=compute, bytes_per_context_token=scores)
