"""The `models` op: the server's models, who loaded each instance, whether each fits.

A fresh listing of the server (it also refreshes the core's view, as a named
`unload` does), then one row per model:

- `instances`: each loaded instance and who loaded it: "lmkeeperd" (an instance
  the core started and tracks), "adopted" (ours now, loaded by someone else
  before), or "other" (someone else's: lmkeeperd leaves it alone);
- `memory`: the estimate at the configured context (`[model.load]
  context_length`, else the model's default) against the memory budget now:
  "fits", "too big" (with the context that would fit, if any) or "unknown".

Estimating reads GGUF headers from disk, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lmkeeperd.core import Lifecycle
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory.sizes import to_gb


async def models_reply(
    view: ServerView, memory: MemoryCheck, core: Lifecycle, fraction: float
) -> dict[str, Any]:
    error = await view.refresh()
    if error is not None:
        return {"ok": False, "error": f"cannot list the server's models: {error}"}
    models = sorted(view.models.values(), key=lambda m: m.key)
    owned = core.owned_instances()
    main = core.instance_id
    adopted = core.adopted
    verdicts = await asyncio.to_thread(_verdicts, memory, models, fraction)
    rows = []
    for info in models:
        instances = [
            {
                "id": inst.id,
                "by": (
                    "adopted"
                    if adopted and inst.id == main
                    else "lmkeeperd"
                    if inst.id in owned
                    else "other"
                ),
            }
            for inst in info.loaded_instances
        ]
        rows.append(
            {
                "key": info.key,
                "type": info.type,
                "size_gb": None if info.size_bytes is None else to_gb(info.size_bytes),
                "quantization": None if info.quantization is None else info.quantization.name,
                "format": info.format,
                "instances": instances,
                "memory": verdicts[info.key],
            }
        )
    return {"ok": True, "models": rows}


def _verdicts(
    memory: MemoryCheck, models: list[ModelInfo], fraction: float
) -> dict[str, dict[str, Any]]:
    from lmkeeperd.memory import budget, check

    try:
        b = budget(memory.probe.read(), fraction)
    except Exception as e:  # the listing answers even when the probe cannot
        return {m.key: {"verdict": "unknown", "why": f"memory probe failed: {e}"} for m in models}
    out: dict[str, dict[str, Any]] = {}
    for info in models:
        try:
            est = memory.estimate(info)
        except Exception as e:  # one unreadable model file must not hide the others
            out[info.key] = {"verdict": "unknown", "why": str(e)}
            continue
        if est is None:
            out[info.key] = {"verdict": "unknown", "why": "no size known for this model"}
            continue
        advisory = check(info, est, b)
        row: dict[str, Any] = {
            "verdict": "fits" if advisory is None else "too big",
            "required_gb": to_gb(est.total_bytes),
            "budget_gb": to_gb(b.usable_bytes),
            "context_length": est.context_length,
        }
        if advisory is not None:
            row["fitting_context"] = advisory.fitting_context
        out[info.key] = row
    return out
