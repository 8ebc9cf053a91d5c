"""The real daemon's roles in this process: a `Daemon` built but not `run()`.

The driver loop and the control socket are not started, so no timer fires and
nothing listens: a test feeds events or calls a role (the control handler, the
proxy bridge, the server sync) and waits for what the real emulator and the
real core make of it. `shutdown()` at the end is the daemon's own (L16).

    def test_x(emulator: Emulator, tmp_path: Path) -> None:
        async def main() -> None:
            async with inprocess_daemon(emulator, tmp_path) as d:
                await load(d, A)
                ...
        run(main())
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmkeeperd.config import Config, ModelConfig, ServerConfig
from lmkeeperd.core import Select, State
from lmkeeperd.daemon import Daemon, assemble
from lmkeeperd.emulator import Emulator


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def config_for(emulator: Emulator, **model: Any) -> Config:
    """Switches at once (no debounce: nothing would tick it), no idle eject."""
    server = ServerConfig(url=emulator.url, request_timeout=5.0, load_timeout=10.0)
    return Config(
        server=server, model=replace(ModelConfig(switch_debounce=0, idle_timeout=0), **model)
    )


@contextlib.asynccontextmanager
async def inprocess_daemon(
    emulator: Emulator, folder: Path, config: Config | None = None
) -> AsyncIterator[Daemon]:
    """A `Daemon` for `emulator`, keeping its state (the stored selection) in `folder`."""
    # Its state in `folder`: never the user's real selection.
    daemon = assemble(config or config_for(emulator), folder / "config.toml", state_dir=folder)
    try:
        yield daemon
    finally:
        await daemon.shutdown()


async def load(daemon: Daemon, model: str) -> None:
    """Select `model` and wait until the core has it loaded."""
    daemon.feed(Select(model))
    await until(
        lambda: daemon.core.state is State.LOADED and daemon.core.model == model,
        f"{model} loaded",
    )


async def until(predicate: Callable[[], Any], what: str, within: float = 10.0) -> Any:
    """Wait for `predicate()` to hold, letting the loop run; fail after `within` s."""
    try:
        async with asyncio.timeout(within):
            # Polled like daemon_harness.wait_until: what a test waits for changes in the
            # daemon's tasks and in the emulator's threads, so there is no one event to await.
            while not (result := predicate()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None
    return result
