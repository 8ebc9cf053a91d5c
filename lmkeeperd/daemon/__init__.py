"""The daemon: wires the lifecycle core to the control socket, the proxy and LM Studio.

    driver.py           Daemon: feeds the core, performs its actions, sleeps, shuts down;
                        run(config_path), the entry point of `lmkeeperd run`
    context.py          Host: what the roles below may use of the driver
    control_handler.py  control-socket requests → core events (streams per connection)
    proxy_bridge.py     the proxy's hooks, the switch gate's world, listeners, metrics
    server_sync.py      LM Studio: loads, unloads, reconcile, memory-pressure watch
    status.py           the `status` snapshot
    wiring.py           factories from the config (also used by `lmkeeperd estimate`)
    memory_advisor.py   the memory advisory (L12) and memory status
    selection.py        the last socket selection, kept across restarts
    sdnotify.py         systemd's notify protocol
    watcher.py          watches the config file
    metrics.py          Prometheus text from announced events

A selection from the socket, hop by hop: docs/architecture.md.
"""

from __future__ import annotations

from lmkeeperd.daemon.driver import Daemon, run
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.wiring import (
    loaded_map,
    make_client,
    make_memory_check,
    proxy_settings,
    settings_from,
)

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
