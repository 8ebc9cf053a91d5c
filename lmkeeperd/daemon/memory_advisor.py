"""The memory advisory (L12) as the daemon and the CLI use it.

One object answers three questions from the config and a `MemoryProbe`:
"would this model fit?" before every load, "what does memory look like?"
for status, and "what exactly would this model need?" for
`lmkeeperd estimate`. The numbers come from lmkeeperd.memory (probe, budget,
GGUF-header estimate).

Why no memory is counted as freed at a switch: lmkeeperd unloads the old
model first and checks memory only when that unload has returned (L4), so
what it freed is already in the probe's `available` figure. Counting it
again would hide a real shortage (LM Studio's own estimate gets this wrong
the other way, bug #1562). `lmkeeperd estimate` does count the daemon's
current model as freed, since there the old model is still loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lmkeeperd.config import Config, is_loopback
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory.sizes import to_gb
from lmkeeperd.status_types import MemoryStatus

if TYPE_CHECKING:
    from lmkeeperd.memory import Budget, Estimate, MemoryProbe


REMOTE_UNKNOWN = "unknown: the server is remote; set [memory] budget"
"""What a memory verdict says when the server is on another machine and no budget is set."""


def server_is_local(config: Config) -> bool:
    """True when `[server] url` names this machine (a loopback host): its RAM is the server's."""
    host = urlsplit(config.server.url).hostname or ""
    return is_loopback(host)


def budget_bytes(config: Config, total_bytes: int | None = None) -> int | None:
    """L25's memory budget: `[memory] budget`, else `budget_fraction` of this machine's memory.

    None when the server is remote and no budget is set (this machine's RAM says nothing
    of the server's: admission then counts models only), or when the memory cannot be read.
    `total_bytes` is this machine's effective total; read from the probe when not given.
    """
    mem = config.memory
    if mem.budget is not None:
        return mem.budget
    if not server_is_local(config):
        return None
    if total_bytes is None:
        from lmkeeperd.memory import PsutilProbe

        try:
            total_bytes = PsutilProbe().read().effective_total_bytes
        except Exception:  # no figure: count models only rather than guess
            return None
    return int(mem.budget_fraction * total_bytes)


class MemoryCheck:
    def __init__(self, config: Config, probe: MemoryProbe | None = None) -> None:
        from lmkeeperd.memory import PsutilProbe

        self._config = config
        self._probe = probe or PsutilProbe()

    @property
    def probe(self) -> MemoryProbe:
        return self._probe

    def _context(self, override: int | None) -> int | None:
        if override is not None:
            return override
        value = self._config.model.load.get("context_length")
        return value if isinstance(value, int) else None

    @property
    def remote_unknown(self) -> str | None:
        """Why no verdict can be given: the server is remote and no budget is set (L25)."""
        if self._config.memory.budget is None and not server_is_local(self._config):
            return REMOTE_UNKNOWN
        return None

    def budget(self, freed_bytes: int = 0) -> Budget:
        """This machine's budget now; `[memory] budget`, when set, replaces the fraction."""
        from lmkeeperd.memory import budget

        b = budget(self._probe.read(), self._config.memory.budget_fraction, freed_bytes)
        absolute = self._config.memory.budget
        return b if absolute is None else dataclasses.replace(b, budget_bytes=absolute)

    def estimate(self, model: ModelInfo, context_length: int | None = None) -> Estimate | None:
        from lmkeeperd.memory import estimate

        load = self._config.model.load
        flash = load.get("flash_attention")
        models_dir = self._config.memory.models_dir
        return estimate(
            model,
            context_length=self._context(context_length),
            models_dir=Path(models_dir) if models_dir else None,
            flash_attention=flash if isinstance(flash, bool) else None,
        )

    def status(self) -> MemoryStatus:
        try:
            b = self.budget()
        except Exception as e:  # status must answer even when the probe cannot
            return {"error": str(e)}
        figures: MemoryStatus = {
            "total_gb": to_gb(b.effective_total_bytes),
            "available_gb": to_gb(b.available_bytes),
            "budget_gb": to_gb(b.budget_bytes),
        }
        if b.limited_by_cgroup:
            figures["ram_gb"] = to_gb(b.total_bytes)
            figures["limited_by_cgroup"] = True
        if b.is_apple_silicon:
            figures["unified_memory"] = True  # RAM is also the GPU's memory
        if b.gpu is not None:
            figures["vram_total_gb"] = to_gb(b.gpu.total_bytes)
            figures["vram_free_gb"] = to_gb(b.gpu.free_bytes)
        return figures

    def advise(
        self, model: ModelInfo, freed_bytes: int = 0, context_length: int | None = None
    ) -> Mapping[str, Any] | None:
        """The `memory_advisory` fields when `model` likely will not fit, else None."""
        from lmkeeperd.memory import advisory_event, check

        if self.remote_unknown is not None:
            return None  # this machine's memory says nothing of the server's
        est = self.estimate(model, context_length)
        if est is None:
            return None
        b = self.budget(freed_bytes)
        advisory = check(model, est, b)
        if advisory is None:
            return None
        payload = advisory_event(advisory)
        payload.pop("event", None)
        return payload
