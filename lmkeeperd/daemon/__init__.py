"""The daemon: wires the lifecycle core to the control socket, the proxy and LM Studio.

    driver.py           Daemon: feeds the core, performs its actions, sleeps, shuts down
    entry.py            run(config_path), the entry point of `lmkeeperd run`
    context.py          Host: what the roles below may use of the driver
    control_handler.py  control-socket requests → core events (streams per connection)
    proxy_bridge.py     the proxy's hooks, the switch gate's world, listeners, metrics
    server_sync.py      LM Studio: loads, unloads, reconcile, memory-pressure watch
    status.py           the `status` snapshot
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
    from lmkeeperd.daemon.driver import Daemon
    from lmkeeperd.daemon.entry import run
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
    "Daemon": "driver",
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
