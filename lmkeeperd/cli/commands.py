"""`run`, `status`, `select`, `unload` and `config check`: talk to the daemon and print.

Handlers of the command table (cli/table.py). Lean imports only: `lmkeeperd
status` is meant to cost little more than starting Python (no pathlib, no
typing, no config package on its path: bench/bench_status_cli.py).

The client commands find the socket leniently (cli/locate.py), so they reach a
daemon whatever state the config file is in; the daemon reports a bad edit in
`status` (`config_error`).

Exit codes (interface.md): 0 success, 1 the daemon or server refused the
request, 2 bad usage or bad config, 3 no daemon running.
"""

from __future__ import annotations

import json
import os
import sys

from lmkeeperd.cli.output import (
    BAD_USAGE,
    NO_DAEMON,
    OK,
    REFUSED,
    error,
    memory_warning,
    refusal,
    warning,
)
from lmkeeperd.errors import ConfigError, DaemonNotRunning, LmkeeperError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from lmkeeperd.cli.locate import Located
    from lmkeeperd.status_types import Status

__all__ = ["BAD_USAGE", "NO_DAEMON", "OK", "REFUSED", "error", "refusal", "warning"]

# An unload is answered once the server has unloaded: room for a slow server
# (the default request_timeout is 10 s; the daemon retries within it).
UNLOAD_TIMEOUT = 130.0


def locate(config_arg: str | None) -> Located:
    from lmkeeperd.cli import locate as finder

    return finder.find(config_arg)


def socket_for(config_arg: str | None) -> str:
    return locate(config_arg).socket


def no_daemon(config_arg: str | None, where: Located, e: DaemonNotRunning) -> str:
    """What to say when nothing answers on the socket: why, and how the socket was chosen."""
    if where.named and not where.config_exists:
        # Nothing recorded a daemon for this file either: not a daemon elsewhere, a typo.
        return f"no config file at {where.config}; the daemon for it is not running"
    return f"{e}; {where.explain(config_arg)}"


def no_daemon_hint(config_arg: str | None) -> str | None:
    """Why a daemon may not be running: its config file may be invalid.

    Validating imports the config package, which costs more than the rest of `status`
    (docs/performance.md): it is done for a person at a terminal; a script (stderr not a
    terminal) is told which command checks it, so a prompt or a monitor that polls
    `status` while no daemon runs stays fast.
    """
    from lmkeeperd.cli import locate as finder

    path = finder.config_file(config_arg)
    if not os.path.exists(path):
        return None
    if not sys.stderr.isatty():
        return f"`lmkeeperd config check` says whether {path} is valid (`run` refuses it if not)"
    from pathlib import Path

    from lmkeeperd.config import load_config

    try:
        load_config(Path(path))
    except ConfigError as e:
        return f"the config file is invalid, so `lmkeeperd run` would refuse it: {e}"
    return None


def report_no_daemon(config_arg: str | None, where: Located, e: DaemonNotRunning) -> str:
    """Print why no daemon answered (and a hint), return the message."""
    message = no_daemon(config_arg, where, e)
    error(message)
    hint = no_daemon_hint(config_arg)
    if hint:
        error(hint)
    return message


def ask(
    config_arg: str | None, obj: dict[str, Any], *, timeout: float | None = 5.0
) -> tuple[int, Any]:
    """Send one request; returns (exit code, reply or None) and prints errors."""
    from lmkeeperd.control.client import request

    where = locate(config_arg)
    try:
        reply = request(where.socket, obj, timeout=timeout)
    except DaemonNotRunning as e:
        report_no_daemon(config_arg, where, e)
        return NO_DAEMON, None
    except (LmkeeperError, OSError) as e:
        error(str(e))
        return REFUSED, None
    if reply.get("ok") is not True:
        error(refusal(reply))
        return REFUSED, reply
    return OK, reply


def run(config: str | None = None) -> int:
    """The daemon in the foreground. Its memory never holds the other commands' code."""
    from lmkeeperd.daemon import run as run_daemon
    from lmkeeperd.paths import CONFIG_ENV, config_path

    # A file named on purpose (option or environment) must exist; the default need not.
    named = config is not None or bool(os.environ.get(CONFIG_ENV, "").strip())
    try:
        return run_daemon(config_path(config), required=named)
    except BrokenPipeError:
        return 1  # its log's reader went away: a failure, unlike `status | head` in main()


def status(config: str | None = None, as_json: bool = False) -> int:
    from lmkeeperd.control.client import request

    where = locate(config)
    try:
        reply = request(where.socket, {"op": "status"}, timeout=5.0)
    except LmkeeperError as e:  # DaemonNotRunning included
        if isinstance(e, DaemonNotRunning):
            code, message = NO_DAEMON, no_daemon(config, where, e)
        else:
            code, message = REFUSED, str(e)
        if as_json:  # scripts get an answer on stdout whatever happened
            print(json.dumps({"running": False, "error": message, "socket": where.socket}))
        if isinstance(e, DaemonNotRunning):
            report_no_daemon(config, where, e)
        else:
            error(message)
        return code
    if reply.get("ok") is not True:
        error(str(reply.get("error", reply)))
        return REFUSED
    payload: Status = reply.get("status", {})
    if as_json:
        print(json.dumps(payload))
    else:
        from lmkeeperd.cli.render import render

        print(render(payload))
    return OK


def select(
    model: str,
    config: str | None = None,
    wait: bool = False,
    timeout: str | None = None,
    keep_alive: str | None = None,
) -> int:
    key = model.strip()
    if not key:
        error("select: the model key is empty")
        return BAD_USAGE
    obj: dict[str, Any] = {"op": "select", "model": model}
    if keep_alive is not None and keep_alive.strip().lower() == "default":
        obj["keep_alive"] = "default"  # back to [model] idle_timeout
    elif keep_alive is not None:
        seconds = _duration("--keep-alive", keep_alive)
        if seconds is None:
            return BAD_USAGE
        obj["keep_alive"] = seconds
    if wait or timeout is not None:
        limit = None if timeout is None else _duration("--timeout", timeout)
        if timeout is not None and limit is None:
            return BAD_USAGE
        from lmkeeperd.cli.waiting import select_and_wait

        where = locate(config)
        return select_and_wait(
            where.socket, obj, key, limit, no_daemon=lambda e: report_no_daemon(config, where, e)
        )
    # A select is answered once the server's catalog was listed (L23): allow for a slow
    # server, as for an unload.
    code, reply = ask(config, obj, timeout=UNLOAD_TIMEOUT)
    if code == OK:
        if reply.get("unchecked"):
            # L23: accepted without the catalog; the daemon checks it when the server is back.
            print(f"selected {key} (not checked yet: the server cannot be listed)")
        else:
            print(f"selected {key}")
        memory_warning(reply)
    return code


def _duration(flag: str, text: str) -> float | None:
    """Seconds from "90s", "10m", "1h", "0"...; None after saying what is wrong."""
    from lmkeeperd.config.values import parse_duration

    try:
        return parse_duration(text.strip(), flag)
    except ConfigError as e:
        error(f"select: {e}")
        return None


def unload(model: str | None = None, config: str | None = None) -> int:
    obj: dict[str, Any] = {"op": "unload"}
    if model is not None:
        obj["model"] = model
    code, _ = ask(config, obj, timeout=UNLOAD_TIMEOUT)
    if code == OK:
        print(f"unloaded {model}" if model else "unloaded")
    return code


def config_check(config: str | None = None) -> int:
    from lmkeeperd.config import load_config
    from lmkeeperd.paths import CONFIG_ENV, config_path

    path = config_path(config)
    if not path.exists():
        # A file named on purpose (option or environment) must exist; the default need not.
        if config is not None or os.environ.get(CONFIG_ENV, "").strip():
            error(f"no config file at {path}")
            return BAD_USAGE
        print(f"{path}: no file; every default applies")
        return OK
    try:
        load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            error(f"{path}: {problem}")
        return BAD_USAGE
    print(f"{path}: valid")
    return OK
