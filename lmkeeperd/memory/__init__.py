"""Memory: how much there is, what a model will need, and what to say when it won't fit.

    probe.py      MemoryProbe / PsutilProbe / StaticProbe → MemorySnapshot (RAM, cgroup, GPU)
    budgeting.py  budget(snapshot, fraction, freed_bytes) → Budget
    gguf.py       read_gguf_header(path): the metadata section only, bounded reads
    kv.py         KVGeometry from GGUF metadata or config.json; KV bytes for a context
    locate.py     find a model's files in LM Studio's models folder
    names.py      parameters and bits from params_string, quantization and key names
    estimator.py  estimate(model, context_length=…, models_dir=…) → Estimate | None
    advisory.py   check(model, estimate, budget) → Advisory | None; advisory_event()
    pressure.py   PressureWatcher.wait_pressure(below, grace) for pressure eject
    sizes.py      parse_size("2GB"), to_gb()

Only the standard library and structlog are imported (psutil at the first
probe read; NVML only if `nvidia-ml-py` is installed), and each submodule only
when one of its names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmkeeperd.memory.advisory import Advisory, advisory_event, check
    from lmkeeperd.memory.budgeting import Budget, budget
    from lmkeeperd.memory.estimator import Estimate, estimate
    from lmkeeperd.memory.gguf import GGUFError, GGUFHeader, read_gguf_header
    from lmkeeperd.memory.pressure import PressureWatcher
    from lmkeeperd.memory.probe import (
        GpuInfo,
        MemoryProbe,
        MemorySnapshot,
        PsutilProbe,
        StaticProbe,
    )
    from lmkeeperd.memory.sizes import GB, parse_size, to_gb

# Names resolve on first use, so `import lmkeeperd.memory.gguf` (or the config
# module importing parse_size) does not pull in asyncio, structlog and the rest.
# No module is named like a function it exports (estimator.py holds estimate(),
# budgeting.py budget()): importing a submodule sets the package attribute of its
# name, which would otherwise shadow the function.
_EXPORTS = {
    "Advisory": "advisory",
    "advisory_event": "advisory",
    "check": "advisory",
    "Budget": "budgeting",
    "budget": "budgeting",
    "Estimate": "estimator",
    "estimate": "estimator",
    "GGUFError": "gguf",
    "GGUFHeader": "gguf",
    "read_gguf_header": "gguf",
    "PressureWatcher": "pressure",
    "GpuInfo": "probe",
    "MemoryProbe": "probe",
    "MemorySnapshot": "probe",
    "PsutilProbe": "probe",
    "StaticProbe": "probe",
    "GB": "sizes",
    "parse_size": "sizes",
    "to_gb": "sizes",
}

__all__ = [
    "GB",
    "Advisory",
    "Budget",
    "Estimate",
    "GGUFError",
    "GGUFHeader",
    "GpuInfo",
    "MemoryProbe",
    "MemorySnapshot",
    "PressureWatcher",
    "PsutilProbe",
    "StaticProbe",
    "advisory_event",
    "budget",
    "check",
    "estimate",
    "parse_size",
    "read_gguf_header",
    "to_gb",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
