"""`lmkeeperd estimate MODEL`: what a model would need, part by part, and a verdict.

Like `lms load --estimate-only`, but with the weights, KV cache and overhead
shown separately. Scripts read the verdict from `--json`'s `fits` (true or
false; interface.md); the exit status says only whether an estimate was made
(0), or why not (1 the server or the model, 2 bad usage or config), as for
every other command. Talks to the LM Studio server directly, so it works without
the daemon; when a daemon runs, the model it has loaded counts as freed (a
switch would unload it first).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from lmkeeperd import logs
from lmkeeperd.cli.output import BAD_USAGE, OK, REFUSED, error
from lmkeeperd.config import Config, load_config
from lmkeeperd.errors import ConfigError, LmkeeperError
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory.sizes import to_gb
from lmkeeperd.paths import config_path, socket_path
from lmkeeperd.status_types import Status


async def _models(config: Config) -> list[ModelInfo]:
    from lmkeeperd.daemon import make_client

    client = make_client(config)
    try:
        return await client.list_models()
    finally:
        await client.aclose()


def _daemon_model(config: Config) -> str | None:
    """The model the running daemon holds, if a daemon answers."""
    from lmkeeperd.control.client import request

    try:
        reply = request(socket_path(config), {"op": "status"}, timeout=2)
    except (LmkeeperError, OSError):
        return None
    if not reply.get("ok"):
        return None
    status: Status = reply.get("status", {})
    model = status.get("model")
    return model if isinstance(model, str) else None


def report(
    config: Config, models: list[ModelInfo], key: str, context: int | None
) -> dict[str, Any]:
    """The estimate as one JSON-ready object (what --json prints)."""
    from lmkeeperd.daemon.memory_advisor import MemoryCheck
    from lmkeeperd.memory import advisory_event, check

    info = next((m for m in models if m.key == key), None)
    if info is None:
        # As `select` says it (L23): the nearest keys, and where every key is listed.
        from lmkeeperd.core import UnknownKey, check_selection

        verdict = check_selection(key, [m.key for m in models])
        message = verdict.message if isinstance(verdict, UnknownKey) else f"no model {key!r}"
        raise LmkeeperError(f"{message}; `lmkeeperd models` lists every key the server has")
    checker = MemoryCheck(config)
    est = checker.estimate(info, context)
    if est is None:
        raise LmkeeperError(f"nothing is known about the size of {key!r}: no estimate possible")
    current = _daemon_model(config)
    freed_model = next((m for m in models if m.key == current and m.key != key), None)
    freed = freed_model.size_bytes or 0 if freed_model else 0
    b = checker.budget(freed)  # `[memory] budget` when set, else the fraction (L25)
    advisory = check(info, est, b)
    per_token = est.kv_cache_bytes / est.context_length if est.context_length else 0.0
    return {
        "model": key,
        "estimate": {
            "weights_gb": to_gb(est.weights_bytes),
            "kv_cache_gb": to_gb(est.kv_cache_bytes),
            "overhead_gb": to_gb(est.overhead_bytes),
            "total_gb": to_gb(est.total_bytes),
            "context_length": est.context_length,
            "kv_bytes_per_token": round(per_token),
            "confidence": est.confidence,
            "source": est.source,
            "quantization": est.quantization,
            "notes": list(est.notes),
        },
        "budget": {
            "budget_gb": to_gb(b.budget_bytes),
            "available_gb": to_gb(b.available_bytes),
            "total_gb": to_gb(b.effective_total_bytes),
            "fraction": b.fraction,
            "configured": config.memory.budget is not None,  # [memory] budget, not the fraction
            "freed_gb": to_gb(b.freed_bytes),
            "freed_model": freed_model.key if freed_model and freed else None,
        },
        "fits": advisory is None,
        "advisory": None if advisory is None else advisory_event(advisory),
    }


def render(r: dict[str, Any]) -> str:
    e, b = r["estimate"], r["budget"]
    quant = f"{e['quantization']}, " if e["quantization"] else ""
    lines = [
        f"{r['model']}  ({quant}context {e['context_length']})",
        f"  weights    {e['weights_gb']:8.2f} GB",
        f"  KV cache   {e['kv_cache_gb']:8.2f} GB   ({e['kv_bytes_per_token']} bytes/token)",
        f"  overhead   {e['overhead_gb']:8.2f} GB",
        f"  total      {e['total_gb']:8.2f} GB   confidence {e['confidence']} ({e['source']})",
        f"budget       {b['budget_gb']:8.2f} GB   "
        + (
            f"([memory] budget; this machine has {b['total_gb']} GB; "
            if b.get("configured")
            else f"({b['fraction']:.0%} of {b['total_gb']} GB; "
        )
        + f"{b['available_gb']} GB available"
        + (
            f", counting {b['freed_gb']} GB freed by unloading {b['freed_model']}"
            if b["freed_model"]
            else ""
        )
        + ")",
    ]
    # Only a verdict: `estimate` loads nothing (the advisory's message says what to change).
    if r["fits"]:
        lines.append("verdict      fits")
    else:
        lines.append("verdict      may not fit")
        lines.append(f"  {r['advisory']['message']}")
    lines.extend(f"note: {n}" for n in e["notes"])
    return "\n".join(lines)


def run(
    model: str, context: int | None = None, as_json: bool = False, config: str | None = None
) -> int:
    if context is not None and context <= 0:
        error("estimate: --context must be a positive number of tokens")
        return BAD_USAGE
    try:
        loaded = load_config(config_path(config))
    except ConfigError as e:
        error(str(e))
        return BAD_USAGE
    # Warnings only, and on stderr: stdout carries the answer (JSON with --json).
    logs.setup("warning", loaded.log.format, stream=sys.stderr)
    try:
        models = asyncio.run(_models(loaded))
        result = report(loaded, models, model.strip(), context)
    except LmkeeperError as e:
        error(str(e))
        return REFUSED
    print(json.dumps(result) if as_json else render(result))
    return OK
