"""The memory verdict, in one set of words wherever it is shown (L12).

`lmkeeperd models` (a row per model), the `select` reply and `lmkeeperd
estimate` all answer "will it fit?" with the same words:

- "fits": the estimate at the configured context is within the budget;
- "may not fit": it is not (with `fitting_context`, the longest context that
  would fit, if any, and `message`, the advisory's sentence saying what to
  change); an estimate, never a refusal: the daemon loads anyway (L12);
- "unknown": no estimate (no size known, an unreadable model file, the memory
  probe failed), with `why`.

The select reply counts the model lmkeeperd holds now as freed, as `estimate`
does: a switch unloads it before the load (L4). `models` lists every model
against the memory as it is. Estimating reads GGUF headers from disk, so the
callers run these in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory.sizes import to_gb

log = structlog.get_logger()

FITS = "fits"
MAY_NOT_FIT = "may not fit"
UNKNOWN = "unknown"

SELECT_VERDICT_TIMEOUT_S = 2.0
"""The select reply waits this long for its verdict at most (a slow disk): then "unknown"."""


def verdicts(
    memory: MemoryCheck, models: list[ModelInfo], fraction: float, freed_bytes: int = 0
) -> dict[str, dict[str, Any]]:
    """Each model's verdict against the budget now (`freed_bytes` counted as free)."""
    remote = memory.remote_unknown
    if remote is not None:  # L25: this machine's memory says nothing of the server's
        return {m.key: {"verdict": UNKNOWN, "why": remote} for m in models}
    try:
        b = memory.budget(freed_bytes)
    except Exception as e:  # the listing answers even when the probe cannot
        return {m.key: {"verdict": UNKNOWN, "why": f"memory probe failed: {e}"} for m in models}
    return {info.key: _verdict(memory, info, b) for info in models}


def _verdict(memory: MemoryCheck, info: ModelInfo, b: Any) -> dict[str, Any]:
    from lmkeeperd.memory import check

    try:
        est = memory.estimate(info)
    except Exception as e:  # one unreadable model file must not hide the others
        return {"verdict": UNKNOWN, "why": str(e)}
    if est is None:
        return {"verdict": UNKNOWN, "why": "no size known for this model"}
    advisory = check(info, est, b)
    row: dict[str, Any] = {
        "verdict": FITS if advisory is None else MAY_NOT_FIT,
        "required_gb": to_gb(est.total_bytes),
        "budget_gb": to_gb(b.usable_bytes),
        "context_length": est.context_length,
    }
    if advisory is not None:
        row["fitting_context"] = advisory.fitting_context
        row["message"] = advisory.message
    return row


async def for_selection(
    memory: MemoryCheck,
    models: dict[str, ModelInfo],
    key: str,
    held: str | None,
    fraction: float,
) -> dict[str, Any]:
    """The `memory` member of a `select` reply for `key`, `held` being lmkeeperd's model now."""
    info = models.get(key)
    if info is None:
        return {"verdict": UNKNOWN, "why": "not in the server's last listing"}
    freed_model = models.get(held) if held is not None and held != key else None
    freed = (freed_model.size_bytes or 0) if freed_model is not None else 0
    try:
        async with asyncio.timeout(SELECT_VERDICT_TIMEOUT_S):
            found = await asyncio.to_thread(verdicts, memory, [info], fraction, freed)
    except TimeoutError:
        return {"verdict": UNKNOWN, "why": "the estimate took too long"}
    row = dict(found[key])
    row["model"] = key
    if freed:
        row["freed_gb"] = to_gb(freed)
    return row
