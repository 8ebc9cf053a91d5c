"""Reading the config file while the daemon runs: what to apply, and what to keep out.

The daemon re-reads its config on every edit (watcher.py) and on SIGHUP. A
reader can see a file half-way through an editor's save, and anyone can put
anything at the path, so a read gives a `Config` to apply or None, "keep the
last good config running", having said why:

- a vanished file: `config_missing` (defaults apply only at start);
- an empty file: what a reader sees between an editor's truncate and its
  write. Never applied (that would be every default, the default server URL
  included, and unloads would go to the wrong server). Logged at debug
  (`config_empty_seen`) and reported as `config_invalid` only if it is still
  empty EMPTY_GRACE_S later;
- anything else wrong (unparsable, invalid, a FIFO, a device, a folder, over
  CONFIG_CAP): `config_invalid`. `load_config` never blocks (fileio.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from lmkeeperd.config import Config, load_config
from lmkeeperd.errors import ConfigEmpty, ConfigError

log = structlog.get_logger()

EMPTY_GRACE_S = 1.0
"""How long a config file may stay empty before it is reported: an editor's save is faster."""


class ConfigReader:
    """Reads `path` for a reload; `announce` reports `config_invalid` like any event."""

    def __init__(
        self,
        path: Path,
        announce: Callable[[str, Mapping[str, Any]], None],
        reread: Callable[[], None],
        on_invalid: Callable[[ConfigError], None] | None = None,
    ) -> None:
        self._path = path
        self._announce = announce
        self._on_invalid = on_invalid  # status shows the problem until a good read
        self._reread = reread  # called once the grace of an empty file is over
        self._empty_timer: asyncio.TimerHandle | None = None
        self._settled = False

    def read(self) -> Config | None:
        """The config to apply, or None: keep the last good one (the reason was reported)."""
        settled, self._settled = self._settled, False
        if self._empty_timer is not None:
            self._empty_timer.cancel()
            self._empty_timer = None
        if not self._path.exists():
            # Mid-run, a vanished file is far more often an editor's save dance or a
            # slip than a wish for every default: keep what runs (defaults apply at start).
            log.warning("config_missing", path=str(self._path), kept="last good config")
            if self._on_invalid is not None:  # status says so until the file is back
                gone = "there is no file here any more (removed or renamed)"
                self._on_invalid(ConfigError([gone], path=str(self._path)))
            return None
        try:
            return load_config(self._path)
        except ConfigEmpty as e:
            if settled:
                self._invalid(e)
            else:
                log.debug("config_empty_seen", path=str(self._path), kept="last good config")
                self._empty_timer = asyncio.get_running_loop().call_later(
                    EMPTY_GRACE_S, self._grace_over
                )
        except ConfigError as e:
            self._invalid(e)
        return None

    def _invalid(self, error: ConfigError) -> None:
        if self._on_invalid is not None:
            self._on_invalid(error)
        self._announce("config_invalid", {"error": str(error), "path": str(self._path)})

    def _grace_over(self) -> None:
        self._empty_timer = None
        self._settled = True
        self._reread()

    def close(self) -> None:
        if self._empty_timer is not None:
            self._empty_timer.cancel()
            self._empty_timer = None
