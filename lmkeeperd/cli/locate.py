"""Where the CLI finds the daemon's socket, whatever state the config file is in.

The client commands (`status`, `select`, `unload`, `models`, `events`) only need
the socket path, so they do not validate the config: a bad edit of the live file
must not lock the operator out of a daemon that keeps running on its last good
config. `find` takes the path, in this order:

1. `[control] socket` in the config file (`--config`, else $LMKEEPERD_CONFIG, else
   the user config folder's `config.toml`), read leniently:
   - a plain file (one-line `key = value`s, simple table headers) is read line by
     line, without the TOML parser (`tomllib` costs about a tenth of `lmkeeperd
     status`); a file that does not mention "socket" at all is not even scanned;
   - anything else (multi-line strings or arrays, quoted keys, inline tables) is
     parsed by `tomllib`; a file TOML refuses (the bad edit) is scanned for the
     `socket = "..."` line of its `[control]` table;
2. when the file names no socket (or is empty, missing, unreadable, a folder, a
   FIFO), the record the daemon running this config file left in the runtime
   folder (control/socket_record.py), if that daemon still runs;
3. else the default place, paths.runtime_dir()/lmkeeperd.sock.

`Located.how` says which of these chose the socket, for the "no socket" error.

The default place is computed here the common Linux way (tests/cli/test_cli_locate.py
compares it with platformdirs, whose import costs about a third of `lmkeeperd status`:
bench/bench_status_cli.py), and platformdirs is asked only for the rest.
Standard library only; no pathlib, no typing: this runs on every call.
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


class Located:
    """The socket to try, and how it was chosen (for the error when nothing listens)."""

    __slots__ = ("config", "config_exists", "how", "named", "socket")

    def __init__(
        self, socket: str, how: str, config: str, *, named: bool, config_exists: bool
    ) -> None:
        self.socket = socket
        self.how = how  # "config", "record" or "default"
        self.config = config
        self.named = named  # the config file was named (--config or $LMKEEPERD_CONFIG)
        self.config_exists = config_exists

    def explain(self, cli_value: str | None) -> str:
        """How the socket was chosen, and how to choose another: one sentence."""
        if cli_value is not None and cli_value.strip():
            source = "--config"
        elif os.environ.get(CONFIG_ENV, "").strip():
            source = f"${CONFIG_ENV}"
        else:
            source = "the default"
        if self.how == "config":
            why = f"it is [control] socket in {self.config} ({source})"
        elif self.how == "record":
            why = f"the daemon running {self.config} ({source}) recorded it at its start"
        elif self.config_exists:
            why = f"it is the default place, as {self.config} ({source}) names no [control] socket"
        else:
            why = f"it is the default place, as there is no config file at {self.config} ({source})"
        return (
            f"{why}; for a daemon run with another config file, pass --config PATH "
            f"or set {CONFIG_ENV}"
        )


def config_file(cli_value: str | None) -> str:
    """The config file: `--config`, else $LMKEEPERD_CONFIG, else the user config folder's."""
    if cli_value is not None and cli_value.strip():
        return os.path.expanduser(cli_value)
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return os.path.expanduser(from_env)
    return os.path.join(_user_config_dir(), "config.toml")


def find(cli_value: str | None) -> Located:
    """The socket of the daemon for the config `cli_value` names (see the docstring)."""
    path = config_file(cli_value)
    named = (cli_value is not None and bool(cli_value.strip())) or bool(
        os.environ.get(CONFIG_ENV, "").strip()
    )
    configured = configured_socket(path)
    if configured:
        return Located(
            os.path.expanduser(configured), "config", path, named=named, config_exists=True
        )
    runtime = _runtime_dir()
    from lmkeeperd.control import socket_record

    recorded = socket_record.live_socket(socket_record.record_file(runtime, path))
    exists = os.path.lexists(path)
    if recorded:
        return Located(recorded, "record", path, named=named, config_exists=exists)
    return Located(
        os.path.join(runtime, SOCKET_NAME), "default", path, named=named, config_exists=exists
    )


def socket_file(config_path: str) -> str:
    """The control socket the daemon reading `config_path` listens on (see the docstring)."""
    return find(config_path).socket


def configured_socket(config_path: str) -> str | None:
    """`[control] socket` from the file, leniently; None when unset or unreadable."""
    data = _read(config_path)
    if data is None or (b"socket" not in data and b"\\u" not in data and b"\\U" not in data):
        return None  # the key cannot be there (a \\u escape could spell it; then we parse)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    plain, value = _plain_socket(text)
    if plain:
        return value
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


_COMPLEX_FILE = (False, None)  # _plain_socket: the TOML parser must read this file
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def _plain_socket(text: str) -> tuple[bool, str | None]:
    """(True, `[control] socket`) of a plain file, read line by line; (False, None) if not plain.

    Plain: every line is blank, a comment, a table header of bare names, or a bare
    `key = value` whose value ends on its line (no multi-line strings or arrays, no
    quoted keys). Then a line reads as TOML reads it, and the socket is the one-line
    string of `socket` under `[control]` (or `control.socket` at the top). Anything that
    could spell the key another way (an inline `control = {...}`, an escape in the
    value) asks the parser.
    """
    if '"""' in text or "'''" in text or "\\u" in text or "\\U" in text:
        return _COMPLEX_FILE
    table = ""
    found: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            double = line.startswith("[[")
            close = line.find("]]" if double else "]")
            name = line[2 if double else 1 : close].strip() if close > 0 else ""
            rest = line[close + (2 if double else 1) :].strip() if close > 0 else "x"
            if not name or not _BARE.issuperset(name) or (rest and rest[0] != "#"):
                return _COMPLEX_FILE
            table = f"[[{name}]]" if double else name  # keys in [[x]] are never control's
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key or not _BARE.issuperset(key):
            return _COMPLEX_FILE
        value = value.strip()
        if not _one_line(value):
            return _COMPLEX_FILE
        full = f"{table}.{key}" if table else key
        if full == "control" or (full.startswith("control.") and full != "control.socket"):
            if not table:  # `control = {...}` or `control.x = ...` at the top: let TOML say
                return _COMPLEX_FILE
            continue
        if full != "control.socket":
            continue
        quote = value[:1]
        end = value.find(quote, 1) if quote in ("'", '"') else -1
        if end < 0 or "\\" in value[:end] or value[end + 1 :].strip()[:1] not in ("", "#"):
            return _COMPLEX_FILE
        found = value[1:end]
    return True, (found if found and found.strip() else None)


def _one_line(value: str) -> bool:
    """A value that ends on its line: not an open array, inline table or string."""
    if not value:
        return False
    if value[0] in "[{":
        # Brackets outside strings must balance on the line; strings make it complex.
        if '"' in value or "'" in value:
            return False
        return value.count("[") == value.count("]") and value.count("{") == value.count("}")
    if value[0] in "\"'":
        end = value.find(value[0], 1)
        return end > 0 and (value[0] == "'" or "\\" not in value[:end])
    return True


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
