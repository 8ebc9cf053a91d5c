"""`lmkeeperd run`: load the config, set up logging, assemble the daemon, run it till it stops."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import structlog

from lmkeeperd import logs
from lmkeeperd.config import load_config
from lmkeeperd.daemon.assembly import assemble
from lmkeeperd.errors import ConfigError

log = structlog.get_logger()


def _remember_missing_sniffio() -> None:
    """Make a missing `sniffio` fail its import at once, every time after the first.

    httpcore imports sniffio inside every lock and cancellation shield it sets up, and
    Python does not remember a failed import: without sniffio (anyio 4 no longer needs it)
    each request searched the whole import path several times, about half the CPU of an
    idle daemon's reconcile (bench/bench_idle.py). None in sys.modules is Python's own
    marker for "this module is not there".
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def run(config_path: Path, *, required: bool = False) -> int:
    """Entry point of `lmkeeperd run`; `required`: the file was named, so it must exist."""
    try:
        config = load_config(config_path, required=required)
    except ConfigError as e:
        logs.setup()
        log.error("config_invalid", error=str(e), path=str(config_path))
        return 2
    logs.setup(config.log.level, config.log.format)
    _remember_missing_sniffio()

    async def main() -> int:
        return await assemble(config, config_path).run()

    return asyncio.run(main())
