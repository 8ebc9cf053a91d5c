"""`lmkeeperd models` and `lmkeeperd events`: what the server holds, what happens live.

Handlers of the command table (cli/table.py), on the control socket's `models`
and `subscribe` ops (interface.md).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from lmkeeperd.cli.commands import ask, socket_for
from lmkeeperd.cli.output import NO_DAEMON, OK, REFUSED, error
from lmkeeperd.errors import DaemonNotRunning, LmkeeperError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# The daemon lists the server afresh first (up to 3 tries within its request timeout).
MODELS_TIMEOUT = 60.0


def models(config: str | None = None, as_json: bool = False) -> int:
    code, reply = ask(config, {"op": "models"}, timeout=MODELS_TIMEOUT)
    if code != OK:
        return code
    rows: list[dict[str, Any]] = reply.get("models", [])
    if as_json:
        print(json.dumps({"models": rows}))
        return OK
    if not rows:
        print("the server lists no models")
        return OK
    table = [("MODEL", "SIZE", "QUANT", "RESIDENT", "LOADED", "MEMORY")]
    for row in rows:
        table.append(
            (
                str(row.get("key")),
                "-" if row.get("size_gb") is None else f"{row['size_gb']} GB",
                str(row.get("quantization") or "-"),
                resident_mark(row.get("resident")),
                _instances(row.get("instances") or []),
                _verdict(row.get("memory") or {}),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return OK


def resident_mark(resident: Any) -> str:
    """L24: "current", "resident" or "pinned" (with the state while loading or unloading)."""
    if not isinstance(resident, dict):
        return "-"
    marks = []
    if resident.get("current"):
        marks.append("current")
    if resident.get("pinned"):
        marks.append("pinned")
    text = ", ".join(marks) or "resident"
    state = resident.get("state")
    return text if state in (None, "loaded") else f"{text} ({state})"


def _instances(instances: list[Mapping[str, Any]]) -> str:
    if not instances:
        return "-"
    return ", ".join(f"{i.get('id')} ({i.get('by')})" for i in instances)


def _verdict(memory: Mapping[str, Any]) -> str:
    verdict = str(memory.get("verdict", "unknown"))
    if verdict == "unknown":
        return f"unknown ({memory['why']})" if memory.get("why") else verdict
    text = (
        f"{verdict}: {memory.get('required_gb')} of {memory.get('budget_gb')} GB"
        f" at {memory.get('context_length')} tokens"
    )
    if verdict == "may not fit" and memory.get("fitting_context"):
        text += f"; fits at {memory['fitting_context']}"
    return text


def events(config: str | None = None, as_json: bool = False) -> int:
    from lmkeeperd.control.client import subscribe

    human = not as_json and sys.stdout.isatty()
    try:
        for event in subscribe(socket_for(config)):
            print(format_event(event) if human else json.dumps(event), flush=True)
    except KeyboardInterrupt:
        return OK
    except DaemonNotRunning as e:
        error(str(e))
        return NO_DAEMON
    except LmkeeperError as e:
        error(str(e))
        return REFUSED
    error("the daemon closed the connection (it stopped)")
    return OK


def format_event(event: Mapping[str, Any]) -> str:
    """`HH:MM:SS.mmm  name  key=value ...`, in local time, for people."""
    stamp = str(event.get("time", ""))
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
        clock = when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    except ValueError:
        clock = stamp or "-"
    fields = " ".join(
        f"{k}={_value(v)}" for k, v in event.items() if k not in ("event", "time") and v is not None
    )
    return f"{clock}  {event.get('event', '?'):<20} {fields}".rstrip()


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)
