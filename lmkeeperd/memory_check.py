"""The pre-load memory advisory (L12), as the daemon sees it.

One small object the daemon asks two things: "would this model fit?" before
every load, and "what does memory look like?" for status. The numbers come
from a `MemoryProbe` (psutil in production, fixed figures in tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lmkeeperd.config import Config
from lmkeeperd.lmstudio.models import ModelInfo

GB = 1e9  # sizes are reported in decimal GB, as LM Studio and OS tools show them


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    total_bytes: int
    available_bytes: int


class MemoryProbe(Protocol):
    def read(self) -> MemoryFigures: ...


class PsutilProbe:
    def read(self) -> MemoryFigures:
        import psutil  # imported on first use: the CLI never needs it

        vm = psutil.virtual_memory()
        return MemoryFigures(int(vm.total), int(vm.available))


def _gb(n: float) -> float:
    return round(n / GB, 2)


class MemoryCheck:
    def __init__(self, config: Config, probe: MemoryProbe | None = None) -> None:
        self._fraction = config.memory.budget_fraction
        self._probe = probe or PsutilProbe()

    def status(self) -> dict[str, Any]:
        try:
            figures = self._probe.read()
        except Exception as e:  # status must answer even when the probe cannot
            return {"error": str(e)}
        return {
            "total_gb": _gb(figures.total_bytes),
            "available_gb": _gb(figures.available_bytes),
            "budget_gb": _gb(figures.total_bytes * self._fraction),
        }

    def advise(self, model: ModelInfo) -> Mapping[str, Any] | None:
        """The `memory_advisory` payload when `model` likely will not fit, else None."""
        if not model.size_bytes:
            return None
        figures = self._probe.read()
        budget = figures.total_bytes * self._fraction
        required = model.size_bytes
        if required <= budget:
            return None
        quant = model.quantization.name if model.quantization else None
        message = (
            f"{model.key} needs about {_gb(required)} GB, over the safe budget of "
            f"{_gb(budget)} GB ({self._fraction:.0%} of {_gb(figures.total_bytes)} GB RAM). "
            "If the load fails or the machine swaps, try a smaller quantization"
            + (f" than {quant}" if quant else "")
            + "."
        )
        return {
            "model": model.key,
            "required_gb": _gb(required),
            "budget_gb": _gb(budget),
            "available_gb": _gb(figures.available_bytes),
            "total_gb": _gb(figures.total_bytes),
            "message": message,
        }
