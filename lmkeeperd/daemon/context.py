"""What the daemon's roles may use of the driver, and nothing more.

The driver (driver.py) owns the lifecycle core and is the only caller of
`Lifecycle.handle`. The roles (control_handler.py, proxy_bridge.py,
server_view.py, operations.py, ...) see it through `Host`: they read the core and the config,
hand it events, announce events and start tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from lmkeeperd.config import Config
from lmkeeperd.core import CoreView, Event


class Host(Protocol):
    @property
    def core(self) -> CoreView:
        """Read only (`CoreView`): roles never call `handle` themselves, they `feed`."""
        ...

    @property
    def config(self) -> Config:
        """The config running now (replaced as a whole on reload)."""
        ...

    def feed(self, event: Event) -> None:
        """Hand `event` to the core and perform what it asks; never call it from inside."""
        ...

    def settle(self) -> None:
        """Do what the proxy's switch gate wants done now (outside any `feed`)."""
        ...

    def announce(self, name: str, fields: Mapping[str, Any]) -> None:
        """Log an event and send it to subscribers, metrics and sd_notify."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as a task the driver cancels and awaits at shutdown."""
        ...

    def track(self, task: asyncio.Task[Any]) -> None:
        """Cancel and await `task` at shutdown, like a spawned one."""
        ...

    def next_stream(self) -> int:
        """A new stream id, unique across the control socket and the proxy (L8)."""
        ...
