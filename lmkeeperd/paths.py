"""Where lmkeeperd's files live: config, control socket, persisted state.

Precedence, highest first:
- config:  `--config PATH` > `$LMKEEPERD_CONFIG` > `<user config dir>/lmkeeperd/config.toml`
- runtime: `$RUNTIME_DIRECTORY` (systemd `RuntimeDirectory=`) > platformdirs' user runtime dir
- state:   `$STATE_DIRECTORY` (systemd `StateDirectory=`) > platformdirs' user state dir

Nothing here creates a directory: callers create them with the modes they need
(the socket's folder 0700, for one). The CLI imports this on every command, so
imports stay lean.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmkeeperd.config import Config

APP_NAME = "lmkeeperd"
CONFIG_ENV = "LMKEEPERD_CONFIG"
SOCKET_NAME = "lmkeeperd.sock"
# Before state was kept per config file, one selection per user lived here.
LEGACY_SELECTION_FILE_NAME = "selection.json"


def _platformdirs() -> ModuleType:
    # Imported when needed only: it costs ~13 ms of a CLI call, which a config that names
    # its socket (with --config or $LMKEEPERD_CONFIG) never needs (bench/bench_status_cli.py).
    import platformdirs

    return platformdirs


def _runtime_dir_warning() -> type[Warning]:
    # platformdirs >= 4.14 warns when $XDG_RUNTIME_DIR is unset or unsafe and then
    # falls back to a checked private folder. The fallback is the behaviour we
    # want, and a Python warning printed by every CLI command would only be noise
    # (and an error under `-W error`). Older platformdirs has no such warning.
    warning: type[Warning] = getattr(_platformdirs(), "RuntimeDirWarning", UserWarning)
    return warning


def _from_env(name: str) -> Path | None:
    # systemd joins several RuntimeDirectory=/StateDirectory= entries with ':'.
    value = os.environ.get(name, "")
    first = value.split(":", 1)[0].strip()
    return Path(first) if first else None


def config_path(cli_value: str | Path | None = None) -> Path:
    """The config file to read; it may not exist (then every default applies)."""
    if cli_value is not None and str(cli_value).strip():
        return Path(cli_value).expanduser()
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    config_dir: Path = _platformdirs().user_config_path(APP_NAME)
    return config_dir / "config.toml"


def runtime_dir() -> Path:
    """The folder for the control socket.

    May raise PermissionError when platformdirs' private fallback folder exists
    but is unsafe (owned by someone else, or a symlink).
    """
    from_env = _from_env("RUNTIME_DIRECTORY")
    if from_env is not None:
        return from_env
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _runtime_dir_warning())
        runtime: Path = _platformdirs().user_runtime_path(APP_NAME)
        return runtime


def state_dir() -> Path:
    """The folder for state kept across restarts (the last selection)."""
    from_env = _from_env("STATE_DIRECTORY")
    if from_env is not None:
        return from_env
    state: Path = _platformdirs().user_state_path(APP_NAME)
    return state


def socket_path(config: Config) -> Path:
    """The control socket: `control.socket` from the config, else the runtime dir's."""
    if config.control.socket:
        return Path(config.control.socket).expanduser()
    return runtime_dir() / SOCKET_NAME


def state_key(config_path: Path) -> str:
    """A short, stable name for the daemon that runs `config_path`.

    State belongs to one daemon: two daemons of one user with their own config files
    must not inherit each other's selection or journal. The resolved path is hashed
    (not spelled out) so that any path makes a short, safe file name.
    """
    import hashlib  # only the daemon needs it: the CLI's imports stay lean

    resolved = str(Path(config_path).expanduser().resolve())
    return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def selection_file(config_path: Path) -> Path:
    """Where the daemon running `config_path` keeps its last socket selection."""
    return state_dir() / f"selection-{state_key(config_path)}.json"


def journal_file(config_path: Path) -> Path:
    """Where the daemon running `config_path` journals its loads and unloads in flight."""
    return state_dir() / f"journal-{state_key(config_path)}.json"


def legacy_selection_file() -> Path:
    """The per-user selection of older versions (read once, default config only)."""
    return state_dir() / LEGACY_SELECTION_FILE_NAME
