"""The emulator's model catalog: what `GET /api/v1/models` lists as downloaded.

A catalog is a sequence of `CatalogModel`s. `default_catalog()` is a built-in,
realistic one (an 84 MB embedding model up to a 377 GB MoE, gguf and mlx);
`load_catalog(path)` reads one from JSON. The JSON format is the shape of a
`/api/v1/models` entry (so a real server's answer can be pasted in), minus
`loaded_instances`, plus an optional `gguf_path`; see docs/emulator.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkeeperd.emulator.checks import is_int, is_number

MODEL_TYPES = ("llm", "embedding")
MODEL_FORMATS = ("gguf", "mlx", None)


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One downloaded model, with every field `/api/v1/models` reports for it."""

    key: str
    size_bytes: int
    type: str = "llm"  # "llm" | "embedding"
    publisher: str | None = None
    display_name: str | None = None
    # The v1 API omits it for embedding models; v0 still reports it as "arch".
    architecture: str | None = None
    quantization: str | None = None
    bits_per_weight: float | None = None
    params_string: str | None = None
    max_context_length: int = 4096
    format: str | None = "gguf"
    vision: bool = False
    trained_for_tool_use: bool = False
    # Not served over HTTP: lets memory-estimate tests point a model at a GGUF file.
    gguf_path: str | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError(f"catalog model {self.key!r}: " + "; ".join(problems))


def _problems(model: CatalogModel) -> list[str]:
    problems = []
    if not isinstance(model.key, str) or not model.key:
        problems.append("key must be a non-empty string")
    if model.type not in MODEL_TYPES:
        problems.append(f"type must be one of {MODEL_TYPES}, not {model.type!r}")
    if not is_int(model.size_bytes) or model.size_bytes < 0:
        problems.append("size_bytes must be a non-negative integer")
    if not is_int(model.max_context_length) or model.max_context_length < 1:
        problems.append("max_context_length must be a positive integer")
    if model.format not in MODEL_FORMATS:
        problems.append(f"format must be one of {MODEL_FORMATS}, not {model.format!r}")
    if model.bits_per_weight is not None and not is_number(model.bits_per_weight):
        problems.append("bits_per_weight must be a number or null")
    for name in ("publisher", "display_name", "architecture", "quantization", "params_string"):
        value = getattr(model, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a string or null")
    for name in ("vision", "trained_for_tool_use"):
        if not isinstance(getattr(model, name), bool):
            problems.append(f"{name} must be a boolean")
    return problems


_GB = 1_000_000_000


def default_catalog() -> tuple[CatalogModel, ...]:
    """Nine models spanning what people really download: sizes, types, formats."""
    return (
        CatalogModel(
            key="text-embedding-nomic-embed-text-v1.5",
            type="embedding",
            publisher="nomic-ai",
            display_name="Nomic Embed Text v1.5",
            architecture="nomic-bert",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=84_106_624,
            params_string=None,
            max_context_length=2048,
            format="gguf",
        ),
        CatalogModel(
            key="qwen/qwen2.5-0.5b-instruct",
            publisher="qwen",
            display_name="Qwen2.5 0.5B Instruct",
            architecture="qwen2",
            quantization="Q8_0",
            bits_per_weight=8,
            size_bytes=531_068_512,
            params_string="0.5B",
            max_context_length=32_768,
            format="gguf",
            trained_for_tool_use=True,
        ),
        CatalogModel(
            key="qwen/qwen3-4b-2507",
            publisher="qwen",
            display_name="Qwen3 4B 2507",
            architecture="qwen3",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=2_497_280_256,
            params_string="4B",
            max_context_length=262_144,
            format="gguf",
            trained_for_tool_use=True,
        ),
        CatalogModel(
            key="meta-llama/llama-3.1-8b-instruct",
            publisher="meta-llama",
            display_name="Llama 3.1 8B Instruct",
            architecture="llama",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=4_920_734_016,
            params_string="8B",
            max_context_length=131_072,
            format="gguf",
            trained_for_tool_use=True,
        ),
        CatalogModel(
            key="google/gemma-3-12b",
            publisher="google",
            display_name="Gemma 3 12B",
            architecture="gemma3",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=8_149_190_528,
            params_string="12B",
            max_context_length=131_072,
            format="gguf",
            vision=True,
        ),
        CatalogModel(
            key="openai/gpt-oss-20b",
            publisher="openai",
            display_name="gpt-oss 20B",
            architecture="gpt-oss",
            quantization="MXFP4",
            bits_per_weight=4,
            size_bytes=12_109_566_560,
            params_string="20B",
            max_context_length=131_072,
            format="gguf",
            trained_for_tool_use=True,
        ),
        CatalogModel(
            key="qwen/qwen3-32b",
            publisher="qwen",
            display_name="Qwen3 32B",
            architecture="qwen3",
            quantization="4bit",
            bits_per_weight=4,
            size_bytes=18_447_745_024,
            params_string="32B",
            max_context_length=40_960,
            format="mlx",
            trained_for_tool_use=True,
        ),
        CatalogModel(
            key="qwen/qwen3-235b-a22b",
            publisher="qwen",
            display_name="Qwen3 235B A22B",
            architecture="qwen3moe",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=142_652_160_000,
            params_string="235B-A22B",
            max_context_length=40_960,
            format="gguf",
            trained_for_tool_use=True,
        ),
        CatalogModel(
            key="deepseek/deepseek-v3-0324",
            publisher="deepseek",
            display_name="DeepSeek V3 0324",
            architecture="deepseek_v3",
            quantization="4bit",
            bits_per_weight=4,
            size_bytes=377 * _GB + 890_112_000,
            params_string="671B",
            max_context_length=163_840,
            format="mlx",
            trained_for_tool_use=True,
        ),
    )


def load_catalog(path: str | Path) -> tuple[CatalogModel, ...]:
    """Read a catalog JSON file; raises ValueError naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read catalog: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    try:
        return parse_catalog(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def parse_catalog(data: object) -> tuple[CatalogModel, ...]:
    """Build a catalog from decoded JSON: a list of entries, or `{"models": [...]}`."""
    if isinstance(data, Mapping) and "models" in data:
        data = data["models"]
    if not isinstance(data, list):
        raise ValueError('a catalog is a JSON list of models, or {"models": [...]}')
    models = tuple(_parse_entry(index, entry) for index, entry in enumerate(data))
    seen: set[str] = set()
    for model in models:
        if model.key in seen:
            raise ValueError(f"model key {model.key!r} appears twice")
        seen.add(model.key)
    return models


def _parse_entry(index: int, entry: object) -> CatalogModel:
    if not isinstance(entry, Mapping):
        raise ValueError(f"models[{index}] must be a JSON object")
    key = entry.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError(f"models[{index}]: 'key' is required (a non-empty string)")
    if "size_bytes" not in entry:
        raise ValueError(f"models[{index}] ({key}): 'size_bytes' is required")
    quantization = entry.get("quantization")
    if quantization is not None and not isinstance(quantization, Mapping):
        raise ValueError(f"models[{index}] ({key}): 'quantization' must be an object or null")
    capabilities = entry.get("capabilities") or {}
    if not isinstance(capabilities, Mapping):
        raise ValueError(f"models[{index}] ({key}): 'capabilities' must be an object")
    fields: dict[str, Any] = {
        "key": key,
        "size_bytes": entry["size_bytes"],
        "type": entry.get("type", "llm"),
        "publisher": entry.get("publisher", key.split("/")[0] if "/" in key else None),
        "display_name": entry.get("display_name"),
        "architecture": entry.get("architecture"),
        "quantization": (quantization or {}).get("name"),
        "bits_per_weight": (quantization or {}).get("bits_per_weight"),
        "params_string": entry.get("params_string"),
        "max_context_length": entry.get("max_context_length", 4096),
        "format": entry.get("format", "gguf"),
        "vision": capabilities.get("vision", False),
        "trained_for_tool_use": capabilities.get("trained_for_tool_use", False),
        "gguf_path": entry.get("gguf_path"),
    }
    if fields["gguf_path"] is not None and not isinstance(fields["gguf_path"], str):
        raise ValueError(f"models[{index}] ({key}): 'gguf_path' must be a string or null")
    try:
        return CatalogModel(**fields)
    except ValueError as exc:
        raise ValueError(f"models[{index}]: {exc}") from exc


def catalog_to_json(models: Sequence[CatalogModel]) -> list[dict[str, Any]]:
    """The JSON form `load_catalog` reads back (round-trips every field)."""
    entries = []
    for model in models:
        entry: dict[str, Any] = {
            "type": model.type,
            "publisher": model.publisher,
            "key": model.key,
            "display_name": model.display_name,
            "architecture": model.architecture,
            "quantization": {"name": model.quantization, "bits_per_weight": model.bits_per_weight},
            "size_bytes": model.size_bytes,
            "params_string": model.params_string,
            "max_context_length": model.max_context_length,
            "format": model.format,
            "capabilities": {
                "vision": model.vision,
                "trained_for_tool_use": model.trained_for_tool_use,
            },
        }
        if model.gguf_path is not None:
            entry["gguf_path"] = model.gguf_path
        entries.append(entry)
    return entries
