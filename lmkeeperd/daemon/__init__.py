"""The daemon: wires the lifecycle core to the control socket, the proxy and LM Studio.

    entry.py            run(config_path), the entry point of `lmkeeperd run`
    assembly.py         assemble(): builds every role, hands each its collaborators
    lifetime.py         Daemon: start, signals, the selection to start with, bounded stop
    driver.py           Driver: feeds the core, performs its actions, sleeps till deadlines
    reload.py           what a re-read config changes
    context.py          Host: what the roles below may use of the driver
    control_handler.py  control-socket requests → core events (streams per connection)
    proxy_bridge.py     the proxy's hooks, the switch gate's world, listeners, metrics
    server_view.py      LM Studio's listing, catalog and reconcile (L17, L18, L29)
    operations.py       loads and unloads, journaled (journal.py, L22), L20's look
    in_flight.py        the loads and unloads under way (shared by the two above)
    liveness.py         what the websocket channel says of the server (paces the reconcile)
    activity_bridge.py  LM Studio's activity: looks when a decision is due (L19-L21, L29)
    pressure.py         the memory-pressure watch
    selection_check.py  selections checked against the catalog (L23)
    status_snapshot.py  the `status` snapshot, asked live
    wiring.py           factories from the config (also used by `lmkeeperd estimate`)
    memory_advisor.py   the memory advisory (L12) and memory status
    selection.py        the last socket selection, kept across restarts
    sdnotify.py         systemd's notify protocol
    watcher/            watches the config file (inotify, kqueue, a stat poll)
    metrics.py          Prometheus text from announced events

A selection from the socket, hop by hop: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmkeeperd.daemon.assembly import assemble
    from lmkeeperd.daemon.entry import run
    from lmkeeperd.daemon.lifetime import Daemon
    from lmkeeperd.daemon.memory_advisor import MemoryCheck
    from lmkeeperd.daemon.wiring import (
        loaded_map,
        make_client,
        make_memory_check,
        proxy_settings,
        settings_from,
    )

# Names resolve on first use, as in lmkeeperd.memory: `lmkeeperd estimate` needs the
# wiring and the memory advisor, not the driver with the control server and the proxy.
_EXPORTS = {
    "Daemon": "lifetime",
    "assemble": "assembly",
    "run": "entry",
    "MemoryCheck": "memory_advisor",
    "loaded_map": "wiring",
    "make_client": "wiring",
    "make_memory_check": "wiring",
    "proxy_settings": "wiring",
    "settings_from": "wiring",
}

__all__ = [
    "Daemon",
    "MemoryCheck",
    "assemble",
    "loaded_map",
    "make_client",
    "make_memory_check",
    "proxy_settings",
    "run",
    "settings_from",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
