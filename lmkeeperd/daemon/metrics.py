"""Prometheus metrics: counted from the daemon's events, rendered as text when scraped.

Counters and the load-time histogram are fed by `Metrics.observe(event, fields)`,
called for every event the daemon announces (the names in interface.md), so
they count exactly what the log and subscribers see. Gauges (state, model,
streams, reachability, the proxy's in-flight requests) are read live at
scrape time from a `Snapshot` the daemon builds.

The text follows Prometheus' exposition format 0.0.4. It is written by hand:
it takes a few dozen lines, and prometheus-client would be a new runtime
dependency (with a process-global registry) for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lmkeeperd.proxy.hooks import ProxyStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

STATES = ("idle", "loading", "loaded", "streaming", "unloading")
UNLOAD_REASONS = ("switch", "idle", "command", "exit", "superseded", "memory_pressure")
FAILURE_KINDS = ("load", "unload", "config", "server")
PROXY_OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "aborted")
# Loads take from under a second (small models, adopted ones) to many minutes.
EVICTION_REASONS = ("max_loaded", "budget", "refused by LM Studio")
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_FAILURE_EVENTS = {
    "load_failed": "load",
    "unload_failed": "unload",
    "config_invalid": "config",
    "server_unreachable": "server",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the daemon is right now, for the gauges."""

    version: str
    state: str
    model: str | None
    selected: str | None
    active_streams: int
    server_reachable: bool | None
    start_time: float  # Unix time the daemon started
    proxy: ProxyStats | None = None  # None when the proxy is off
    proxy_switches: int = 0
    # L24, L25: (model, estimated bytes or None, pinned) per resident of ours.
    residents: tuple[tuple[str, float | None, bool], ...] = ()
    budget_bytes: float | None = None  # None: no budget (a remote server without one)
    budget_used_bytes: float = 0.0


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break


class Metrics:
    """The daemon's counters since start. See the module docstring."""

    def __init__(self) -> None:
        self.loads = {(kind, adopted): 0 for kind in ("main", "draft") for adopted in (False, True)}
        self.unloads = dict.fromkeys(UNLOAD_REASONS, 0)
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)
        self.advisories = 0
        self.vanished = 0
        self.evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self.refusals = 0
        self.thrashing = 0
        self.load_seconds = _Histogram(LOAD_BUCKETS)

    def observe(self, event: str, fields: Mapping[str, Any]) -> None:
        """Count one announced event (unknown events are ignored)."""
        if event == "load_finished":
            kind = "draft" if fields.get("draft") else "main"
            adopted = bool(fields.get("adopted"))
            self.loads[kind, adopted] = self.loads.get((kind, adopted), 0) + 1
            seconds = fields.get("seconds")
            if not adopted and isinstance(seconds, int | float):
                self.load_seconds.observe(float(seconds))
        elif event == "unloaded":
            reason = str(fields.get("reason", "unknown"))
            self.unloads[reason] = self.unloads.get(reason, 0) + 1
        elif event in _FAILURE_EVENTS:
            kind = _FAILURE_EVENTS[event]
            self.failures[kind] += 1
        elif event == "memory_advisory":
            self.advisories += 1
        elif event == "model_vanished":
            self.vanished += 1
        elif event == "evicted":
            reason = str(fields.get("reason", "unknown"))
            self.evictions[reason] = self.evictions.get(reason, 0) + 1
        elif event == "load_refused":
            self.refusals += 1
        elif event == "thrashing":
            self.thrashing += 1

    def render(self, now: Snapshot) -> str:
        out = _Text()
        out.family("lmkeeperd_info", "gauge", "lmkeeperd's version (always 1).")
        out.sample("lmkeeperd_info", 1, version=now.version)
        out.family("lmkeeperd_start_time_seconds", "gauge", "When the daemon started (Unix time).")
        out.sample("lmkeeperd_start_time_seconds", now.start_time)
        out.family("lmkeeperd_state", "gauge", "The lifecycle state: 1 for the current one.")
        for state in STATES:
            out.sample("lmkeeperd_state", int(state == now.state), state=state)
        out.family(
            "lmkeeperd_model_info",
            "gauge",
            "The model lmkeeperd has loaded, is loading or unloading (no sample when none).",
        )
        if now.model:
            out.sample("lmkeeperd_model_info", 1, model=now.model)
        out.family(
            "lmkeeperd_selected_info", "gauge", "The model selected last (no sample when none)."
        )
        if now.selected:
            out.sample("lmkeeperd_selected_info", 1, model=now.selected)
        out.family(
            "lmkeeperd_active_streams", "gauge", "Open streams, control socket and proxy together."
        )
        out.sample("lmkeeperd_active_streams", now.active_streams)
        out.family(
            "lmkeeperd_server_reachable",
            "gauge",
            "1 when LM Studio answered the last check, 0 when it did not or was not checked yet.",
        )
        out.sample("lmkeeperd_server_reachable", int(now.server_reachable is True))
        out.family("lmkeeperd_loads_total", "counter", "Models loaded (adopted: already loaded).")
        for (kind, adopted), n in sorted(self.loads.items()):
            out.sample("lmkeeperd_loads_total", n, kind=kind, adopted=str(adopted).lower())
        out.family("lmkeeperd_unloads_total", "counter", "Models unloaded, by reason.")
        for reason, n in self.unloads.items():
            out.sample("lmkeeperd_unloads_total", n, reason=reason)
        out.family(
            "lmkeeperd_failures_total",
            "counter",
            "Failed loads, unloads and config reloads, and times LM Studio became unreachable.",
        )
        for kind, n in self.failures.items():
            out.sample("lmkeeperd_failures_total", n, kind=kind)
        out.family(
            "lmkeeperd_memory_advisories_total", "counter", "Loads warned about as too large."
        )
        out.sample("lmkeeperd_memory_advisories_total", self.advisories)
        out.family(
            "lmkeeperd_model_vanished_total", "counter", "Our model was unloaded behind our back."
        )
        out.sample("lmkeeperd_model_vanished_total", self.vanished)
        self._render_residency(out, now)
        out.histogram(
            "lmkeeperd_load_duration_seconds",
            "How long loads took (adopted models excluded).",
            self.load_seconds,
        )
        if now.proxy is not None:
            self._render_proxy(out, now.proxy, now.proxy_switches)
        return out.text()

    def _render_residency(self, out: _Text, now: Snapshot) -> None:
        out.family(
            "lmkeeperd_residents", "gauge", "Models of ours resident (L24), pinned ones too."
        )
        out.sample("lmkeeperd_residents", len(now.residents))
        out.family(
            "lmkeeperd_resident_estimated_bytes",
            "gauge",
            "What each resident model needs by lmkeeperd's estimate, its draft included (L25).",
        )
        for model, estimate, pinned in now.residents:
            if estimate is not None:
                out.sample(
                    "lmkeeperd_resident_estimated_bytes",
                    estimate,
                    model=model,
                    pinned=str(pinned).lower(),
                )
        out.family(
            "lmkeeperd_budget_bytes",
            "gauge",
            "The memory budget for the residents (no sample: none, the server is remote).",
        )
        if now.budget_bytes is not None:
            out.sample("lmkeeperd_budget_bytes", now.budget_bytes)
        out.family(
            "lmkeeperd_budget_used_bytes",
            "gauge",
            "What the residents and loads in flight take of the budget by their estimates.",
        )
        out.sample("lmkeeperd_budget_used_bytes", now.budget_used_bytes)
        out.family("lmkeeperd_evictions_total", "counter", "Resident models evicted, by reason.")
        for reason, n in self.evictions.items():
            out.sample("lmkeeperd_evictions_total", n, reason=reason)
        out.family(
            "lmkeeperd_load_refusals_total", "counter", "Loads LM Studio refused (its guardrails)."
        )
        out.sample("lmkeeperd_load_refusals_total", self.refusals)
        out.family(
            "lmkeeperd_thrashing_warnings_total",
            "counter",
            "Warnings that switches keep alternating between the same models.",
        )
        out.sample("lmkeeperd_thrashing_warnings_total", self.thrashing)

    @staticmethod
    def _render_proxy(out: _Text, stats: ProxyStats, switches: int) -> None:
        out.family(
            "lmkeeperd_proxy_requests_total",
            "counter",
            "Requests forwarded by the proxy, by answer class (aborted: a side left).",
        )
        for outcome in (*PROXY_OUTCOMES, *sorted(set(stats.responses) - set(PROXY_OUTCOMES))):
            out.sample(
                "lmkeeperd_proxy_requests_total", stats.responses.get(outcome, 0), outcome=outcome
            )
        out.family(
            "lmkeeperd_proxy_requests_in_flight", "gauge", "Requests the proxy is forwarding now."
        )
        out.sample("lmkeeperd_proxy_requests_in_flight", stats.in_flight)
        out.family("lmkeeperd_proxy_streams_open", "gauge", "Streams opened by proxied requests.")
        out.sample("lmkeeperd_proxy_streams_open", stats.streams_open)
        out.family(
            "lmkeeperd_proxy_upstream_errors_total",
            "counter",
            "Requests LM Studio failed to answer or broke off.",
        )
        out.sample("lmkeeperd_proxy_upstream_errors_total", stats.upstream_errors)
        out.family(
            "lmkeeperd_proxy_switches_total", "counter", "Model switches asked for by requests."
        )
        out.sample("lmkeeperd_proxy_switches_total", switches)
        if stats.last_request_wall is not None:
            out.family(
                "lmkeeperd_proxy_last_request_timestamp_seconds",
                "gauge",
                "When the proxy last received a request (Unix time).",
            )
            out.sample("lmkeeperd_proxy_last_request_timestamp_seconds", stats.last_request_wall)


class _Text:
    """Prometheus text exposition format 0.0.4."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self._lines.append(f"# HELP {name} {escaped}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        self._lines.append(f"{name}{_labels(labels.items())} {_number(value)}")

    def histogram(self, name: str, help_text: str, h: _Histogram) -> None:
        self.family(name, "histogram", help_text)
        cumulative = 0
        for bound, n in zip(h.buckets, h.counts, strict=True):
            cumulative += n
            self.sample(f"{name}_bucket", cumulative, le=_number(bound))
        self.sample(f"{name}_bucket", h.count, le="+Inf")
        self.sample(f"{name}_sum", h.sum)
        self.sample(f"{name}_count", h.count)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in pairs)
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
