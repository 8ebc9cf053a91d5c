"""Helpers for the residency end-to-end tests (L24-L28, L30): the real daemon, the emulator.

The ground truth is the emulator's request log (what lmkeeperd sent, with monotonic
arrival and answer times) and its loaded instances; `status --json`'s `"resident"` list is
what lmkeeperd says it holds. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from daemon_harness import DaemonProc, toml_value, wait_until
from direct_generation import CHAT

from lmkeeperd.emulator import Emulator

# Catalog models of the emulator with lmkeeperd's estimates at their default context
# (`lmkeeperd estimate`, catalog sizes): E 0.92 GB, S 1.47, A 3.7, B 6.29, C 9.65.
E = "text-embedding-nomic-embed-text-v1.5"
S = "qwen/qwen2.5-0.5b-instruct"
A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "google/gemma-3-12b"
LOAD = "/api/v1/models/load"
UNLOAD = "/api/v1/models/unload"
# A budget far above every model used here: only max_loaded limits (and the tests do not
# depend on this machine's memory).
ROOMY = "100GB"


def residency(
    factory: Callable[..., DaemonProc],
    max_loaded: int = 2,
    *,
    budget: str = ROOMY,
    idle_timeout: str = "30m",
    **model: Any,
) -> DaemonProc:
    """A started daemon with residency on: `[model] max_loaded`, `[memory] budget`, `model`.

    Its config is written here: `pinned` is a TOML array, which the harness's renderer
    does not write.
    """
    tables = {
        "model": {"max_loaded": max_loaded, "idle_timeout": idle_timeout, **model},
        "memory": {"budget": budget},
    }
    d = factory(start=False, **tables)
    d.write_config(render_tables(d.tables))
    d.start()
    return d


def render_tables(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for `tables`, lists of strings included."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if isinstance(value, list | tuple):
                text = "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
            else:
                text = toml_value(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def residents(d: DaemonProc) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = d.status()["resident"]
    return found


def resident(d: DaemonProc, model: str) -> dict[str, Any] | None:
    return next((r for r in residents(d) if r["model"] == model), None)


def wait_residents(
    d: DaemonProc, models: Sequence[str], timeout: float = 15, state: str = "loaded"
) -> list[dict[str, Any]]:
    """Status once exactly `models` are resident, each in `state`."""

    def check() -> list[dict[str, Any]] | None:
        now = residents(d)
        ok = sorted(r["model"] for r in now) == sorted(models) and all(
            r["state"] == state for r in now
        )
        return now if ok else None

    found: list[dict[str, Any]] = wait_until(check, timeout, f"residents {models} {state}")
    return found


def select(d: DaemonProc, model: str, timeout: float = 15) -> dict[str, Any]:
    """Select `model` and wait until it is the current model, loaded."""
    assert d.request({"op": "select", "model": model}) == {"ok": True}
    return d.wait_status(state="loaded", model=model, timeout=timeout)


def records(emulator: Emulator, path: str) -> list[Any]:
    return [r for r in emulator.requests() if r.path == path]


def load_records(emulator: Emulator, model: str | None = None) -> list[Any]:
    return [r for r in records(emulator, LOAD) if model is None or r.body["model"] == model]


def unload_records(emulator: Emulator, instance: str | None = None) -> list[Any]:
    return [
        r
        for r in records(emulator, UNLOAD)
        if instance is None or r.body["instance_id"] == instance
    ]


def overlapping_loads(emulator: Emulator) -> list[tuple[str, str]]:
    """Pairs of load requests that were in flight at the same time (L30 forbids any)."""
    spans = [
        (r.t, r.t_done if r.t_done is not None else float("inf"), r.body["model"])
        for r in load_records(emulator)
    ]
    spans.sort()
    pairs = []
    for i, (_, end, model) in enumerate(spans):
        for start2, _, model2 in spans[i + 1 :]:
            if start2 < end:
                pairs.append((model, model2))
    return pairs


def instances_per_model(emulator: Emulator) -> dict[str, int]:
    return {model: len(ids) for model, ids in emulator.loaded().items()}


def chat(emulator: Emulator, model: str, timeout: float = 10) -> int:
    """One short chat request straight to LM Studio (the emulator); its status code."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        return http.post(emulator.url + CHAT, json=body).status_code


def wait_doing(d: DaemonProc, model: str, prefix: str = "generating", timeout: float = 15) -> None:
    """Until status shows LM Studio's activity on resident `model` (L19)."""

    def check() -> bool:
        r = resident(d, model)
        return r is not None and str(r.get("doing") or "").startswith(prefix)

    wait_until(check, timeout, f"resident {model} doing {prefix}")


def generating(emulator: Emulator, model: str) -> bool:
    """Is a request using an instance of `model` on the emulator now?"""
    return any(i["model"] == model and i["in_use"] for i in emulator.instance_info().values())


def since(emulator: Emulator) -> float:
    """A mark in the emulator's request log: requests after it arrived later."""
    emulator.requests()  # nothing pending in the log's order
    return time.monotonic()


def after(emulator: Emulator, mark: float, path: str) -> list[Any]:
    return [r for r in records(emulator, path) if r.t > mark]
