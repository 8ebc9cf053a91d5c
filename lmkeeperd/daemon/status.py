"""The status snapshot the control socket's `status` op returns.

Its keys and values are the interface (interface.md; `lmkeeperd status`
renders them): change them only together with the renderers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import cast

from lmkeeperd import __version__
from lmkeeperd.control.server import ControlServer
from lmkeeperd.core import CoreView
from lmkeeperd.daemon.activity_bridge import ActivityBridge
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.server_sync import ServerSync
from lmkeeperd.daemon.why import explain_status
from lmkeeperd.status import AdvisoryStatus, ConfigErrorStatus, RestoredSelection, Status


def build_status(
    *,
    core: CoreView,
    now: float,
    started: float,
    config_path: Path,
    config_error: ConfigErrorStatus | None = None,
    reconcile_interval: float = 15.0,
    sync: ServerSync,
    bridge: ProxyBridge,
    control: ControlServer | None,
    restored: RestoredSelection | None = None,
    activity: ActivityBridge | None = None,
) -> Status:
    """`now` and `started` are readings of the driver's monotonic clock."""
    idle = core.idle_eject_in(now)
    draft = core.draft
    listed_ago = None if sync.listed_at is None else time.monotonic() - sync.listed_at
    # Two intervals: one reconcile may be late under load without the view being wrong.
    stale = sync.reachable is not True or listed_ago is None or listed_ago > 2 * reconcile_interval
    return {
        "state": core.state.value,
        "model": core.model,
        "selected": core.selected,
        "pending": core.pending,
        "engine": core.engine,
        "active_streams": core.active_streams,
        "idle_eject_in_s": None if idle is None else round(idle, 1),
        "server": {
            "url": sync.base_url,
            "reachable": sync.reachable,
            "loaded": sorted(sync.loaded),
            "error": sync.error,
            "listed_ago_s": None if listed_ago is None else round(listed_ago, 1),
            "stale": stale,
        },
        "memory": sync.memory.status(),
        "last_error": core.last_error,
        "last_advisory": cast(AdvisoryStatus | None, sync.last_advisory),
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
    }
