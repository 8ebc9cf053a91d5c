"""The status object (interface.md), typed: what `Daemon.status()` builds and the
`status` reply carries, read back by the CLI's renderer and by `estimate`.

A shared leaf: typing only, so the CLI's `status` can import it for free. The
shapes are checked against a running daemon's reply by tests/cli/test_status_shape.py.
Readers still use `.get()`: the reply may come from a daemon of another version.
"""

from __future__ import annotations

from typing import TypedDict


class ServerStatus(TypedDict):
    url: str
    reachable: bool | None  # None: not checked yet
    loaded: list[str]  # every model the server holds, ours or not, sorted
    error: str | None  # why the last listing failed
    listed_ago_s: float | None  # age of the last listing; None: never listed
    stale: bool  # the listing is older than two reconcile intervals, or the server is down


class MemoryStatus(TypedDict, total=False):
    """Either `error` alone (the probe failed) or the figures, in decimal GB."""

    error: str
    total_gb: float
    available_gb: float
    budget_gb: float
    ram_gb: float  # with limited_by_cgroup: the machine's RAM
    limited_by_cgroup: bool
    unified_memory: bool  # Apple silicon: RAM is also the GPU's memory
    vram_total_gb: float
    vram_free_gb: float


class _AdvisoryFigures(TypedDict):
    """The last `memory_advisory` event's fields, without "event" (MemoryCheck.advise)."""

    model: str
    required_gb: float
    budget_gb: float
    available_gb: float
    total_gb: float
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    context_length: int
    fitting_context: int | None
    suggested_quantization: str | None
    confidence: str
    source: str
    message: str


# A subclass rather than NotRequired[...]: Python 3.11 ignores NotRequired under
# `from __future__ import annotations` at run time (typing.get_type_hints readers).
class AdvisoryStatus(_AdvisoryFigures, total=False):
    """With the GPU figures, only where a GPU's own memory was measured."""

    ram_required_gb: float
    gpu_offload_gb: float
    vram_total_gb: float
    vram_free_gb: float


class ProxyStatus(TypedDict):
    listen: str
    requests_in_flight: int
    streams_open: int
    requests_total: int
    waiting_for_switch: int
    last_request_at: str | None  # ISO 8601 UTC, "...Z"
    last_request_ago_s: float | None
    select_on_request: bool


class MetricsStatus(TypedDict):
    listen: str


class ConfigErrorStatus(TypedDict):
    """The live config file's current problem; the daemon runs on its last good config."""

    file: str
    line: int | None  # of the first problem, when it names one
    message: str  # the first problem
    problems: list[str]  # all of them, each as `config check` prints it
    since: str  # ISO 8601 UTC, "...Z": when the daemon first read the bad version


class InFlightStatus(TypedDict):
    op: str  # "load" | "unload"
    model: str | None
    elapsed_s: float


class ServerActivityStatus(TypedDict):
    """What LM Studio says our model's instance is doing (L19), from its websocket channel."""

    doing: str | None  # "idle" | "generating" | "processingPrompt" | ...; None: not read yet
    queued: int | None  # requests LM Studio counts on the instance, the running one included
    last_used_ago_s: float | None  # since LM Studio's lastUsedTime; None: never used


class WhyStatus(TypedDict):
    """Why the daemon is in its state (the core's `explain()`, times made readable)."""

    cause: str | None  # the last transition's cause: "idle eject", "load failed: ...", ...
    cause_at: str | None  # ISO 8601 UTC, "...Z"
    cause_ago_s: float | None
    waiting_for: str | None  # "debounce", "1 stream to end", "server busy: ...", ...
    waiting_in_s: float | None  # when that wait ends by itself
    in_flight: InFlightStatus | None
    server_busy: str | None
    activity_source: str  # "lmstudio" | "clients only"
    deferred_unloads: int


class ResidentStatus(TypedDict):
    """One model of ours resident on the server (L24-L28), the current one first."""

    model: str
    instance_id: str | None  # None while its load is in flight
    state: str  # "loading" | "loaded" | "unloading"
    pinned: bool
    current: bool  # the last selected: what `model` and `state` describe
    last_used_ago_s: float | None  # None: not used since it was loaded
    idle_eject_in_s: float | None  # None: no idle timer runs (pinned, in use, timeout off)
    estimate_gb: float | None  # what it needs by lmkeeperd's estimate (draft included)
    doing: str | None  # LM Studio's state of the instance (L19); None: cannot be read
    streams: int  # client streams naming it


class BudgetStatus(TypedDict):
    """What the residents take of the memory budget (L25), and the counts (L24)."""

    used_gb: float  # by the residents' estimates, loads in flight included
    total_gb: float | None  # None: no budget (a remote server without [memory] budget)
    source: str  # "config" ([memory] budget) | "fraction" (of this machine) | "none"
    residents: int  # models of ours resident, pinned ones included
    max_loaded: int  # how many selected models may stay resident (pinned ones beside)


class RestoredSelection(TypedDict):
    """The stored selection the daemon started with (a socket selection from before a
    restart), and the file it came from."""

    model: str
    file: str


class Status(TypedDict):
    state: str  # idle | loading | loaded | streaming | unloading (core.State)
    model: str | None
    selected: str | None
    pending: str | None
    engine: str  # "lmstudio", or the other engine the user moved to
    active_streams: int
    idle_eject_in_s: float | None
    server: ServerStatus
    memory: MemoryStatus
    last_error: str | None
    last_advisory: AdvisoryStatus | None
    pid: int
    version: str
    uptime_s: float
    adopted: bool
    draft: str | None
    config: str
    subscribers: int
    dropped_events: int
    proxy: ProxyStatus | None
    metrics: MetricsStatus | None
    running: bool  # always true here; `status --json` prints false when no daemon answers
    why: WhyStatus
    keep_alive_s: float | None  # the selection's own idle timeout (`select --keep-alive`)
    config_error: ConfigErrorStatus | None
    restored_selection: RestoredSelection | None
    activity_source: str  # "lmstudio" | "clients only" (L21)
    activity_reason: str | None  # why "clients only": "older server", "auth refused", ...
    server_activity: ServerActivityStatus | None  # None: LM Studio's view cannot be read
    resident: list[ResidentStatus]  # L24: every model of ours resident, the current first
    budget: BudgetStatus
