"""The status object (interface.md) rendered for people.

Imported by the CLI's `status` command on every call: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmkeeperd.status import ProxyStatus, Status


def _fmt_seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    seconds = int(value)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{value:.1f}s"


def _or_dash(value: Any) -> str:
    return "-" if value in (None, "", []) else str(value)


def _proxy_row(proxy: ProxyStatus) -> str:
    in_flight = proxy.get("requests_in_flight") or 0
    text = f"{_or_dash(proxy.get('listen'))}, {in_flight} request{'s' if in_flight != 1 else ''}"
    text += " in flight"
    waiting = proxy.get("waiting_for_switch") or 0
    if waiting:
        text += f", {waiting} waiting for a switch"
    ago = proxy.get("last_request_ago_s")
    text += ", no request yet" if ago is None else f", last request {_fmt_seconds(ago)} ago"
    return text


def render(status: Status) -> str:
    """A short, readable table of the daemon's status."""
    server = status.get("server") or {}
    memory = status.get("memory") or {}
    loaded = server.get("loaded") or []
    if server.get("reachable") is True:
        reach = "reachable"
    elif server.get("reachable") is False:
        reach = "UNREACHABLE"
    else:
        reach = "not checked yet"
    state = str(status.get("state", "?"))
    if status.get("active_streams"):
        state += (
            f" ({status['active_streams']} stream{'s' if status['active_streams'] > 1 else ''})"
        )
    if status.get("engine") not in (None, "lmstudio"):
        state += f" — hands-off, engine is {status['engine']}"
    model = _or_dash(status.get("model"))
    if status.get("adopted"):
        model += " (adopted)"
    rows = [
        ("state", state),
        ("model", model),
        ("selected", _or_dash(status.get("selected"))),
        ("pending", _or_dash(status.get("pending"))),
        ("idle eject in", _fmt_seconds(status.get("idle_eject_in_s"))),
        ("server", f"{_or_dash(server.get('url'))} ({reach})"),
        ("server loaded", ", ".join(map(str, loaded)) if loaded else "nothing"),
    ]
    if memory:
        rows.append(
            (
                "memory",
                f"{memory.get('available_gb', '?')} GB free of {memory.get('total_gb', '?')} GB, "
                f"budget {memory.get('budget_gb', '?')} GB",
            )
        )
    proxy = status.get("proxy")
    if isinstance(proxy, Mapping):
        rows.append(("proxy", _proxy_row(proxy)))
    if status.get("last_error"):
        rows.append(("last error", str(status["last_error"])))
    advisory = status.get("last_advisory")
    if isinstance(advisory, Mapping):
        rows.append(("last advisory", str(advisory.get("message", advisory))))
    rows.append(
        (
            "daemon",
            f"pid {_or_dash(status.get('pid'))}, v{_or_dash(status.get('version'))}, "
            f"up {_fmt_seconds(status.get('uptime_s'))}",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
