"""The `models` op: the server's models, who loaded each instance, whether each fits.

A fresh listing of the server (it also refreshes the core's view, as a named
`unload` does), then one row per model:

- `instances`: each loaded instance and who loaded it: "lmkeeperd" (an instance
  the core started and tracks), "adopted" (ours now, loaded by someone else
  before), or "other" (someone else's: lmkeeperd leaves it alone);
- `resident` (L24): null, or `{"state", "pinned", "current"}` for a model of
  ours resident on the server;
- `memory`: the estimate at the configured context (`[model.load]
  context_length`, else the model's default) against the memory budget now:
  "fits", "may not fit" (with the context that would fit, if any) or "unknown",
  the same words as `select` and `estimate` (memory_verdict.py).

Estimating reads GGUF headers from disk, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import lmkeeperd.daemon.memory_verdict as memory_verdict
from lmkeeperd.core import CoreView
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.memory.sizes import to_gb


async def models_reply(
    view: ServerView, memory: MemoryCheck, core: CoreView, fraction: float
) -> dict[str, Any]:
    error = await view.refresh()
    if error is not None:
        return {"ok": False, "error": f"cannot list the server's models: {error}"}
    models = sorted(view.models.values(), key=lambda m: m.key)
    owned = core.owned_instances()
    main = core.instance_id
    adopted = core.adopted
    verdicts = await asyncio.to_thread(memory_verdict.verdicts, memory, models, fraction)
    resident = {
        r.model: {"state": r.state, "pinned": r.pinned, "current": r.current}
        for r in core.residents_view()
    }
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
                "resident": resident.get(info.key),
                "memory": verdicts[info.key],
            }
        )
    return {"ok": True, "models": rows}
