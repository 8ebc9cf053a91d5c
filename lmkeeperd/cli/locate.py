"""Where the CLI finds the daemon's socket, whatever state the config file is in.

The client commands (`status`, `select`, `unload`, `models`, `events`) only need
the socket path, so they do not validate the config: a bad edit of the live file
must not lock the operator out of a daemon that keeps running on its last good
config (issue 13). The path comes from `[control] socket` read leniently:

1. the file does not mention "socket": the default location (no parsing at all);
2. `tomllib` reads the file: its `[control] socket` string, if any;
3. the file is not valid TOML (the bad edit): the `socket = "..."` line of the
   `[control]` table, read line by line;
4. anything else: the default location.

The default location is paths.runtime_dir()/lmkeeperd.sock. platformdirs computes
it, but importing platformdirs costs about a third of `lmkeeperd status`
(bench/bench_status_cli.py), so the common Linux cases are computed here the same
way (tests/cli/test_cli_locate.py compares both) and platformdirs is asked only
for the rest. Standard library only; no pathlib, no typing: this runs on every call.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Mapping

APP = "lmkeeperd"
CONFIG_ENV = "LMKEEPERD_CONFIG"
SOCKET_NAME = "lmkeeperd.sock"
MAX_CONFIG_BYTES = 1024 * 1024  # as the config loader's cap: a config file is small


def config_file(cli_value: str | None) -> str:
    """The config file: `--config`, else $LMKEEPERD_CONFIG, else the user config folder's."""
    if cli_value is not None and cli_value.strip():
        return os.path.expanduser(cli_value)
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return os.path.expanduser(from_env)
    return os.path.join(_user_config_dir(), "config.toml")


def socket_file(config_path: str) -> str:
    """The control socket the daemon reading `config_path` listens on (see the docstring)."""
    configured = configured_socket(config_path)
    if configured:
        return os.path.expanduser(configured)
    return os.path.join(_runtime_dir(), SOCKET_NAME)


def configured_socket(config_path: str) -> str | None:
    """`[control] socket` from the file, leniently; None when unset or unreadable."""
    data = _read(config_path)
    if data is None or (b"socket" not in data and b"\\u" not in data and b"\\U" not in data):
        return None  # the key cannot be there (a \\u escape could spell it; then we parse)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    import tomllib

    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return _scan_lines(text)
    control = parsed.get("control")
    value = control.get("socket") if isinstance(control, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def _read(path: str) -> bytes | None:
    # Non-blocking and regular files only, as lmkeeperd/fileio.py (not imported: pathlib).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (info.st_mode & 0o170000) != 0o100000 or info.st_size > MAX_CONFIG_BYTES:
            return None
        return os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _scan_lines(text: str) -> str | None:
    """`socket = "..."` under `[control]` in a file TOML refuses (a bad edit elsewhere)."""
    table = ""
    found: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and not line.startswith("[["):
            table = line[1 : line.find("]")].strip() if "]" in line else ""
            continue
        key, eq, value = line.partition("=")
        key = key.strip().strip("\"'")
        if not eq or not (
            (table == "control" and key == "socket") or (table == "" and key == "control.socket")
        ):
            continue
        value = value.strip()
        if value[:1] in ("'", '"') and value[0] in value[1:]:
            found = value[1 : value.index(value[0], 1)]
    return found if found and found.strip() else None


def _user_config_dir() -> str:
    env: Mapping[str, str] = os.environ
    if sys.platform == "linux":
        xdg = env.get("XDG_CONFIG_HOME", "")
        if os.path.isabs(xdg):
            return os.path.join(xdg, APP)
        home = env.get("HOME", "")
        if os.path.isabs(home):
            return os.path.join(home, ".config", APP)
    from lmkeeperd.paths import config_path

    return str(config_path().parent)


def _runtime_dir() -> str:
    """paths.runtime_dir(), without platformdirs where the answer is plain."""
    env: Mapping[str, str] = os.environ
    systemd = env.get("RUNTIME_DIRECTORY", "").split(":", 1)[0].strip()
    if systemd:
        return systemd
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if sys.platform == "linux" and os.path.isabs(xdg) and _private_dir(xdg):
        return os.path.join(xdg, APP)
    # Unset or unsafe: platformdirs' fallback rules (checked private folders) apply.
    from lmkeeperd.paths import runtime_dir

    try:
        return str(runtime_dir())
    except PermissionError:
        return os.path.join(xdg or "/nonexistent", APP)  # connecting will say there is none


def _private_dir(path: str) -> bool:
    """What platformdirs asks of $XDG_RUNTIME_DIR: our own real folder, closed to others."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    is_dir = (info.st_mode & 0o170000) == 0o040000
    return is_dir and info.st_uid == os.geteuid() and not info.st_mode & 0o077
