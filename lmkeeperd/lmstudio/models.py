"""Typed records of what LM Studio's `/api/v1/models` and `/load` return.

Only the fields lmkeeperd uses are typed; unknown extra fields are ignored and
optional ones may be missing (see ../docs or lmstudio-api.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Quantization:
    name: str | None = None
    bits_per_weight: float | None = None


@dataclass(frozen=True, slots=True)
class LoadedInstance:
    id: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One downloaded model, as `GET /api/v1/models` lists it."""

    key: str
    type: str = "llm"  # "llm" | "embedding"
    publisher: str | None = None
    display_name: str | None = None
    architecture: str | None = None
    quantization: Quantization | None = None
    size_bytes: int | None = None
    params_string: str | None = None
    format: str | None = None  # "gguf" | "mlx" | None
    max_context_length: int | None = None
    loaded_instances: tuple[LoadedInstance, ...] = ()

    @property
    def instance_ids(self) -> tuple[str, ...]:
        return tuple(i.id for i in self.loaded_instances)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What `POST /api/v1/models/load` answered."""

    instance_id: str
    type: str | None = None
    load_time_seconds: float | None = None
    status: str | None = None
    load_config: Mapping[str, Any] | None = None
