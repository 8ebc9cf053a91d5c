"""What can happen to the lifecycle core: the events the driver feeds it.

Events are plain frozen records. Those that answer an action carry the
action's `op` id, so the core can tell a fresh outcome from a stale one
(a superseded load that finally returns, lifecycle rule L5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SWITCH_MODES = ("auto", "make-before-break", "break-before-make")


@dataclass(frozen=True, slots=True)
class Settings:
    """The part of the config the core decides with (applied from the next use)."""

    auto_load: bool = True
    idle_timeout: float = 1800.0  # seconds; <= 0 disables idle eject (L11)
    switch_debounce: float = 0.3  # seconds; 0 switches at once (L3)
    draft_model: str = ""  # "" = no draft model (L15)
    load_config: Mapping[str, Any] = field(default_factory=dict)  # sent with every load (L14)
    unload_on_exit: bool = True  # L16
    # L20: how long a switch queued behind LM Studio's own activity (no client stream)
    # waits before it is forced; 0 waits forever.
    busy_switch_wait: float = 120.0
    # L24, L25, L28: how many models may be resident at once (1: one at a time, as L4 says;
    # pinned models do not count), and the models never evicted and never idled out.
    max_loaded: int = 1
    pinned: tuple[str, ...] = ()
    # L26: "auto" | "make-before-break" | "break-before-make". "auto" makes before it
    # breaks only when a budget is known and the old and the new model fit it together.
    switch: str = "auto"
    # L25: GB the residents may take together; None: no budget known, admission counts
    # models only.
    budget_gb: float | None = None

    def __post_init__(self) -> None:
        if self.switch not in SWITCH_MODES:
            modes = ", ".join(repr(m) for m in SWITCH_MODES)
            raise ValueError(f"switch must be one of {modes}, got {self.switch!r}")
        budget = self.budget_gb
        if budget is not None and not (budget > 0 and math.isfinite(budget)):
            raise ValueError(f"budget_gb must be a finite number of GB > 0, got {budget}")
        if not self.busy_switch_wait >= 0:  # also refuses NaN
            raise ValueError(f"busy_switch_wait must be >= 0 seconds, got {self.busy_switch_wait}")
        if self.max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {self.max_loaded}")


# --- from clients (socket, config file, CLI) ---------------------------------


@dataclass(frozen=True, slots=True)
class Select:
    """A client or the config file selected a model (L1-L3).

    `keep_alive` is an idle timeout for this selection only (0 never ejects); it
    overrides `Settings.idle_timeout` until another model is selected, or the same
    one with `default_idle` (back to `Settings.idle_timeout`).
    """

    model: str
    keep_alive: float | None = None
    default_idle: bool = False

    def __post_init__(self) -> None:
        ka = self.keep_alive
        if ka is not None and not (ka >= 0 and math.isfinite(ka)):
            raise ValueError(f"keep_alive must be a finite number of seconds >= 0, got {ka}")


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """A client began streaming from `model` (None: the current model); `stream` is
    unique per daemon run. The stream counts as that model's use (L24)."""

    stream: int
    model: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """A stream ended, or the connection that opened it closed (L8)."""

    stream: int


@dataclass(frozen=True, slots=True)
class Activity:
    """A client just used `model` (None: the current model): its last use is now (L10, L24)."""

    model: str | None = None


@dataclass(frozen=True, slots=True)
class EngineChanged:
    """The user moved to another engine, or back to LM Studio (L13)."""

    name: str


@dataclass(frozen=True, slots=True)
class UnloadCommand:
    """`lmkeeperd unload [MODEL]`: answered by a CommandDone with the same `request`."""

    request: int
    model: str | None = None


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The config file changed; the new settings apply from the next use."""

    settings: Settings


@dataclass(frozen=True, slots=True)
class MemoryPressure:
    """Available memory stayed below the configured floor for its grace period."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The daemon is stopping (L16). Every later event is ignored."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: fire whatever deadline is due. Carries nothing else."""


# --- outcomes of the core's own actions --------------------------------------


@dataclass(frozen=True, slots=True)
class LoadFinished:
    """A StartLoad succeeded; `adopted` when the model already had an instance (L17)."""

    op: int
    instance_id: str
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """A StartLoad failed. `unreachable` when the server could not be reached at all.

    `abandoned` when the driver gave up waiting (load_timeout, or a stop) on a load
    the server may still finish: the driver reports that instance later as an
    OwnStray (L22). `refused` when LM Studio's guardrail refused the load for lack of
    resources (L27): lmkeeperd evicts an idle resident and tries again.
    """

    op: int
    error: str
    unreachable: bool = False
    abandoned: bool = False
    refused: bool = False  # LM Studio's guardrail refused it for lack of resources (L27)


@dataclass(frozen=True, slots=True)
class UnloadFinished:
    op: int


@dataclass(frozen=True, slots=True)
class UnloadFailed:
    op: int
    error: str


@dataclass(frozen=True, slots=True)
class UnloadDeferred:
    """A StartUnload with `look_first` was not sent: LM Studio showed the instance busy (L20).

    `doing` is LM Studio's processing status, `queued` its queued request count.
    """

    op: int
    doing: str
    queued: int = 0


# --- what the server says is loaded (L17, L18) -------------------------------


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """What `GET /api/v1/models` says is loaded: model key -> instance ids.

    `after_outage` is true for the first snapshot after the server was
    unreachable (or the first at start): the core then restores the model it
    wanted, since a server restart forgets every model.
    """

    loaded: Mapping[str, tuple[str, ...]]
    after_outage: bool = False


@dataclass(frozen=True, slots=True)
class ModelEstimates:
    """GB each model needs on the server (its draft included), computed by the driver (L25).

    Merged into what the core knows; a model with no estimate counts 0 in the budget.
    """

    estimates: Mapping[str, float]

    def __post_init__(self) -> None:
        for model, gb in self.estimates.items():
            if not (gb >= 0 and math.isfinite(gb)):
                raise ValueError(f"estimate of {model!r} must be a finite number of GB >= 0")


# --- what LM Studio itself sees (L19-L22) ------------------------------------


@dataclass(frozen=True, slots=True)
class ServerActivity:
    """LM Studio's view of one instance (L19), from its websocket channel.

    `doing`: "generating" | "processingPrompt" | "computingEmbedding" | "idle";
    `busy` = doing != "idle" or queued > 0. `last_used` is LM Studio's
    lastUsedTime converted by the driver to the core's monotonic clock (None:
    never used).
    """

    instance_id: str
    busy: bool
    doing: str = "idle"
    queued: int = 0
    last_used: float | None = None


@dataclass(frozen=True, slots=True)
class ActivitySource:
    """Whether LM Studio's activity can be read (L21); `reason` says why not."""

    available: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class OwnStray:
    """An instance lmkeeperd started and no longer tracks (L22).

    The driver derives it from its journal after a restart, from a load it
    abandoned (LoadFailed.abandoned) or from a hung unload still listed.
    `leaving`: the journal holds an unload of it (lmkeeperd was removing it, and
    may never have loaded it: an unload command): it is never kept as a resident.
    """

    model: str
    instance_id: str
    leaving: bool = False


Event = (
    Select
    | StreamStarted
    | StreamEnded
    | Activity
    | EngineChanged
    | UnloadCommand
    | SettingsChanged
    | MemoryPressure
    | Shutdown
    | Tick
    | LoadFinished
    | LoadFailed
    | UnloadFinished
    | UnloadFailed
    | UnloadDeferred
    | ServerSnapshot
    | ServerActivity
    | ActivitySource
    | OwnStray
    | ModelEstimates
)
