"""The status snapshot the control socket's `status` op returns.

Its keys and values are the interface (interface.md; `lmkeeperd status`
renders them): change them only together with the renderers.

`status` asks LM Studio live (L29): the server's listing and what our instance
is doing, both at once, within `STATUS_LOOK_S`; a look at most 1 s old serves a
burst. Whatever a look learns feeds the core as a reconcile would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from lmkeeperd import __version__
from lmkeeperd.control.server import ControlServer
from lmkeeperd.core import CoreView
from lmkeeperd.daemon.activity_bridge import STATUS_CACHE_S, STATUS_LOOK_S, ActivityBridge
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.operations import Operations
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.daemon.why import ConfigProblem, explain_status
from lmkeeperd.status_types import (
    AdvisoryStatus,
    BudgetStatus,
    ConfigErrorStatus,
    ResidentStatus,
    RestoredSelection,
    Status,
)


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(max(0.0, value), digits)


def residents_status(
    core: CoreView, now: float, activity: ActivityBridge | None
) -> list[ResidentStatus]:
    """L24: every resident of ours, the current one first (the core's `residents_view`)."""
    rows: list[ResidentStatus] = []
    for r in core.residents_view():
        rows.append(
            {
                "model": r.model,
                "instance_id": r.instance_id,
                "state": r.state,
                "pinned": r.pinned,
                "current": r.current,
                "last_used_ago_s": None if r.last_used is None else _rounded(now - r.last_used),
                "idle_eject_in_s": (
                    None if r.idle_deadline is None else _rounded(r.idle_deadline - now)
                ),
                "estimate_gb": None if r.estimate_gb is None else round(r.estimate_gb, 2),
                "doing": (
                    activity.doing(r.instance_id)
                    if activity is not None and r.instance_id is not None
                    else None
                ),
                "streams": r.streams,
            }
        )
    return rows


def budget_status(core: CoreView, residents: int, *, configured: bool) -> BudgetStatus:
    """L25: what the residents take of the budget; `configured`: `[memory] budget` is set."""
    settings = core.settings
    total = settings.budget_gb
    source = "none" if total is None else "config" if configured else "fraction"
    return {
        "used_gb": round(core.budget_used_gb(), 2),
        "total_gb": None if total is None else round(total, 2),
        "source": source,
        "residents": residents,
        "max_loaded": settings.max_loaded,
    }


def build_status(
    *,
    core: CoreView,
    now: float,
    started: float,
    config_path: Path,
    config_error: ConfigErrorStatus | None = None,
    reconcile_interval: float = 15.0,
    view: ServerView,
    ops: Operations,
    bridge: ProxyBridge,
    control: ControlServer | None,
    restored: RestoredSelection | None = None,
    activity: ActivityBridge | None = None,
    budget_configured: bool = False,
) -> Status:
    """`now` and `started` are readings of the driver's monotonic clock."""
    idle = core.idle_eject_in(now)
    draft = core.draft
    resident = residents_status(core, now, activity)
    listed_ago = None if view.listed_at is None else time.monotonic() - view.listed_at
    # Two intervals: one reconcile may be late under load without the view being wrong.
    stale = view.reachable is not True or listed_ago is None or listed_ago > 2 * reconcile_interval
    return {
        "state": core.state.value,
        "model": core.model,
        "selected": core.selected,
        "pending": core.pending,
        "engine": core.engine,
        "active_streams": core.active_streams,
        "idle_eject_in_s": None if idle is None else round(idle, 1),
        "server": {
            "url": view.base_url,
            "reachable": view.reachable,
            "loaded": sorted(view.loaded),
            "error": view.error,
            "listed_ago_s": None if listed_ago is None else round(listed_ago, 1),
            "stale": stale,
        },
        "memory": ops.memory.status(),
        "last_error": core.last_error,
        "last_advisory": cast(AdvisoryStatus | None, ops.last_advisory),
        "pid": os.getpid(),
        "version": __version__,
        "uptime_s": round(now - started, 1),
        "adopted": core.adopted,
        "draft": None if draft is None else draft[0],
        "config": str(config_path),
        "subscribers": control.subscribers if control else 0,
        "dropped_events": control.dropped_events if control else 0,
        "proxy": bridge.proxy_status(),
        "metrics": bridge.metrics_status(),
        "running": True,
        "why": explain_status(core, now),
        "keep_alive_s": core.keep_alive,
        "config_error": config_error,
        "restored_selection": restored,
        "activity_source": core.activity_source,
        "activity_reason": activity.reason if activity else None,
        "server_activity": activity.server_activity(now) if activity else None,
        "resident": resident,
        "budget": budget_status(core, len(resident), configured=budget_configured),
    }


class StatusReporter:
    """Answers `status`: asks LM Studio live, then builds the snapshot."""

    def __init__(
        self,
        host: Host,
        *,
        clock: Callable[[], float],
        config_path: Path,
        config_problem: ConfigProblem,
        view: ServerView,
        ops: Operations,
        bridge: ProxyBridge,
        activity: ActivityBridge,
        control: Callable[[], ControlServer | None],
    ) -> None:
        self._host = host
        self._clock = clock
        self._started = clock()
        self._config_path = config_path
        self._config_problem = config_problem
        self._view = view
        self._ops = ops
        self._bridge = bridge
        self._activity = activity
        self._control = control
        self._restored: RestoredSelection | None = None

    def restored_from(self, restored: RestoredSelection | None) -> None:
        """The selection restored at start (`restored_selection`)."""
        self._restored = restored

    async def live(self) -> Status:
        """L29: one round trip to LM Studio (listing and activity at once), then the snapshot."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_LOOK_S):
                await asyncio.gather(
                    self._view.look_for_status(STATUS_CACHE_S), self._activity.look_for_status()
                )
        return self.snapshot()

    def snapshot(self) -> Status:
        """What the daemon knows now, without asking LM Studio."""
        return build_status(
            core=self._host.core,
            now=self._clock(),
            started=self._started,
            config_path=self._config_path,
            config_error=self._config_problem.current,
            reconcile_interval=self._view.reconcile_interval_now(),
            view=self._view,
            ops=self._ops,
            bridge=self._bridge,
            control=self._control(),
            restored=self._restored,
            activity=self._activity,
            budget_configured=self._host.config.memory.budget is not None,
        )
