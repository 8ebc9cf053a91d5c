"""The status object (interface.md) rendered for people.

Imported by the CLI's `status` command on every call: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from lmkeeperd.status_types import ProxyStatus, Status, WhyStatus


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


def _clock_ago(seconds: Any) -> str:
    """Local "HH:MM:SS" of `seconds` ago (from the age, not the stamp: datetime costs ~2 ms)."""
    if not isinstance(seconds, int | float):
        return "-"
    import time

    return time.strftime("%H:%M:%S", time.localtime(time.time() - seconds))


def _why_rows(why: WhyStatus) -> list[tuple[str, str]]:
    rows = []
    if why.get("cause"):
        # The time first: a cause may be a sentence of its own ("...a response.").
        rows.append(
            (
                "why",
                f"{_clock_ago(why.get('cause_ago_s'))} "
                f"({_fmt_seconds(why.get('cause_ago_s'))} ago): {why['cause']}",
            )
        )
    if why.get("waiting_for"):
        text = str(why["waiting_for"])
        if why.get("waiting_in_s") is not None:
            text += f" ({_fmt_seconds(why['waiting_in_s'])} left)"
        rows.append(("waiting for", text))
    if why.get("server_busy"):
        rows.append(("server busy", str(why["server_busy"])))
    return rows


def _server_row(server: Mapping[str, Any]) -> str:
    if server.get("reachable") is True:
        reach = "reachable"
    elif server.get("reachable") is False:
        reach = "UNREACHABLE"
    else:
        reach = "not checked yet"
    ago = server.get("listed_ago_s")
    listed = "never listed" if ago is None else f"listed {_fmt_seconds(ago)} ago"
    if server.get("stale"):
        listed += ", STALE"
    return f"{_or_dash(server.get('url'))} ({reach}; {listed})"


def _activity_row(status: Status) -> str | None:
    """L19/L21: whose activity counts, and what LM Studio says our model is doing."""
    source = status.get("activity_source")
    if source is None:
        return None  # a daemon from before the activity channel
    if source != "lmstudio":
        reason = status.get("activity_reason")
        return f"clients only ({reason})" if reason else "clients only"
    seen = status.get("server_activity")
    if not isinstance(seen, Mapping):
        return "lmstudio"
    text = f"lmstudio: {seen.get('doing') or 'not read yet'}"
    if seen.get("queued"):
        text += f", {seen['queued']} queued"
    if seen.get("last_used_ago_s") is not None:
        text += f", last used {_fmt_seconds(seen['last_used_ago_s'])} ago"
    return text


def _budget_row(budget: Mapping[str, Any]) -> str:
    used = budget.get("used_gb")
    total = budget.get("total_gb")
    count = f"{budget.get('residents', '?')} resident, max_loaded {budget.get('max_loaded', '?')}"
    if total is None:
        return f"{_or_dash(used)} GB estimated, no budget (counting models only); {count}"
    return f"{_or_dash(used)} GB of {total} GB used; {count}"


def render_residents(residents: list[Any]) -> str:
    """L24: one line per resident model, the current one marked with `*`."""
    header = ("", "model", "state", "pinned", "last used", "idle eject", "GB", "doing", "streams")
    lines = [header]
    for r in residents:
        ago = r.get("last_used_ago_s")
        lines.append(
            (
                "*" if r.get("current") else "",
                str(r.get("model")),
                str(r.get("state")),
                "yes" if r.get("pinned") else "",
                "-" if ago is None else f"{_fmt_seconds(ago)} ago",
                "never" if r.get("idle_eject_in_s") is None else _fmt_seconds(r["idle_eject_in_s"]),
                _or_dash(r.get("estimate_gb")),
                _or_dash(r.get("doing")),
                str(r.get("streams", 0)),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def render(status: Status) -> str:
    """A short, readable table of the daemon's status."""
    server = status.get("server") or {}
    memory = status.get("memory") or {}
    loaded = server.get("loaded") or []
    why = status.get("why") or {}
    state = str(status.get("state", "?"))
    in_flight = why.get("in_flight")
    if isinstance(in_flight, Mapping):
        state += f" ({_fmt_seconds(in_flight.get('elapsed_s'))})"
    if status.get("active_streams"):
        state += (
            f" ({status['active_streams']} stream{'s' if status['active_streams'] > 1 else ''})"
        )
    if status.get("engine") not in (None, "lmstudio"):
        state += f" — hands-off, engine is {status['engine']}"
    model = _or_dash(status.get("model"))
    if status.get("adopted"):
        model += " (adopted)"
    rows = [("state", state), *_why_rows(why), ("model", model)]
    selected = _or_dash(status.get("selected"))
    # The selection brought back at start ({"model", "file"}): noted only while it is the
    # one in force; a later selection of another model ends it.
    restored = status.get("restored_selection")
    if isinstance(restored, Mapping) and restored.get("model") == status.get("selected"):
        selected += " (restored)"
    rows += [("selected", selected), ("pending", _or_dash(status.get("pending")))]
    keep_alive = status.get("keep_alive_s")
    if keep_alive is not None:
        rows.append(("keep alive", "never ejects" if keep_alive == 0 else _fmt_seconds(keep_alive)))
    rows += [
        ("idle eject in", _fmt_seconds(status.get("idle_eject_in_s"))),
        ("activity", _activity_row(status) or "-"),
        ("server", _server_row(server)),
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
    budget = status.get("budget")
    if isinstance(budget, Mapping):
        rows.append(("budget", _budget_row(budget)))
    proxy = status.get("proxy")
    if isinstance(proxy, Mapping):
        rows.append(("proxy", _proxy_row(proxy)))
    problem = status.get("config_error")
    if isinstance(problem, Mapping):
        rows.append(
            (
                "CONFIG ERROR",
                f"{problem.get('file')}: {problem.get('message')} "
                "(running on the last good config; `lmkeeperd config check` lists every problem)",
            )
        )
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
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    residents = status.get("resident")
    if isinstance(residents, list) and len(residents) > 1:
        text += "\n\nresident models:\n" + render_residents(residents)
    return text
