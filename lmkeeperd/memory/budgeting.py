"""The safe memory budget for the next load: a pure function of one snapshot.

    effective_total = min(total RAM, cgroup limit)
    budget          = budget_fraction × effective_total
    available       = min(effective available now + freed_bytes, effective_total)
    usable          = min(budget, available)

A load is advised against when its estimate exceeds `usable`: more than the
share of RAM we allow a model (`budget`), or more than is actually free once
the switch has unloaded the current model (`available`).

`freed_bytes` is the memory the model being unloaded at a switch holds (its own
estimate, or its `size_bytes`, as the caller knows it). It is added to what is
available now because the unload happens before the load (lifecycle L4); not
counting it is LM Studio's own guardrail bug (lmstudio-bug-tracker #1562),
which refuses a switch between two models that each fit. Capping at
`effective_total` keeps an over-generous figure from inventing memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmkeeperd.memory.probe import GpuInfo, MemorySnapshot


@dataclass(frozen=True, slots=True)
class Budget:
    total_bytes: int
    effective_total_bytes: int
    budget_bytes: int
    # Free now plus what the switch frees, capped at effective_total_bytes.
    available_bytes: int
    freed_bytes: int
    fraction: float
    limited_by_cgroup: bool
    is_apple_silicon: bool
    gpu: GpuInfo | None = None

    @property
    def usable_bytes(self) -> int:
        """What a model may take: the budget, unless less is actually free."""
        return min(self.budget_bytes, self.available_bytes)


def budget(snapshot: MemorySnapshot, fraction: float, freed_bytes: int = 0) -> Budget:
    if not 0 < fraction <= 1:
        raise ValueError(f"budget_fraction must be in (0, 1], got {fraction!r}")
    effective_total = snapshot.effective_total_bytes
    freed = max(0, freed_bytes)
    available = min(snapshot.effective_available_bytes + freed, effective_total)
    return Budget(
        total_bytes=snapshot.total_bytes,
        effective_total_bytes=effective_total,
        budget_bytes=int(fraction * effective_total),
        available_bytes=available,
        freed_bytes=freed,
        fraction=fraction,
        limited_by_cgroup=effective_total < snapshot.total_bytes,
        is_apple_silicon=snapshot.is_apple_silicon,
        gpu=snapshot.gpu,
    )
