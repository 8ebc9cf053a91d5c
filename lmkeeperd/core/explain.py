"""Why the core is in its state: one read-only record for `status`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Explanation:
    """What `Lifecycle.explain(now)` says. Times are the core's monotonic clock.

    - `cause`: the last transition's cause ("idle eject", "load failed: <error>",
      "unloaded by command", "switch", "model vanished", "memory pressure",
      "server busy: generating", ...) and `cause_at` when it happened.
    - `waiting_for`: what the current state waits for ("debounce", "1 stream to
      end", "server busy: generating", "load in flight", "unload in flight", "the
      load of X to finish: LM Studio cannot cancel a load" (L30)), or None;
      `waiting_until` when that wait ends by itself (the debounce, or the
      forced switch after `busy_switch_wait`), or None.
    - `in_flight`: "load" | "unload" of the main model, started at `in_flight_since`
      (`in_flight_s` seconds before `now`).
    - `pending`: a selection not applied yet; `keep_alive`: the selection's own idle
      timeout; `idle_eject_at`: when the idle timer fires.
    - `server_busy`: what LM Studio says our model is doing, or None;
      `activity_source`: "lmstudio" | "clients only" (L21).
    """

    state: str
    model: str | None
    cause: str | None
    cause_at: float | None
    waiting_for: str | None
    waiting_until: float | None
    in_flight: str | None
    in_flight_since: float | None
    in_flight_s: float | None
    pending: str | None
    keep_alive: float | None
    idle_eject_at: float | None
    server_busy: str | None
    activity_source: str
    deferred_unloads: int


@dataclass(frozen=True, slots=True)
class ResidentView:
    """One resident model as `CoreView.residents_view()` shows it (L24-L28).

    `state`: "loading" | "loaded" | "unloading"; `current`: the last selected (what
    `status` shows as `model`); `last_used` and `idle_deadline` are the core's
    monotonic clock (`idle_deadline` None: no idle timer runs, e.g. pinned or in use);
    `estimate_gb` what the driver estimated (None: unknown, counts 0 in the budget);
    `streams` client streams naming it; `busy` LM Studio says it is busy (L19).
    """

    model: str
    instance_id: str | None
    state: str
    pinned: bool
    current: bool
    last_used: float | None
    idle_deadline: float | None
    estimate_gb: float | None
    streams: int
    busy: bool
