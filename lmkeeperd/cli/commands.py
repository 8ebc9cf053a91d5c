"""`run`, `status`, `select`, `unload` and `config check`: talk to the daemon and print.

Handlers of the command table (cli/table.py). Lean imports only: `lmkeeperd
status` is meant to cost little more than starting Python.

Exit codes (interface.md): 0 success, 1 the daemon or server refused the
request, 2 bad usage or bad config, 3 no daemon running.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmkeeperd.cli.table import ERROR_PREFIX
from lmkeeperd.errors import ConfigError, DaemonNotRunning, LmkeeperError

if TYPE_CHECKING:
    from lmkeeperd.status import Status

OK, REFUSED, BAD_USAGE, NO_DAEMON = 0, 1, 2, 3


def error(message: str) -> None:
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr)


def _socket_and_timeout(config_arg: str | None) -> tuple[Path, float]:
    from lmkeeperd.config import load_config
    from lmkeeperd.paths import config_path, socket_path

    config = load_config(config_path(config_arg))
    return socket_path(config), config.server.request_timeout


def _ask(config_arg: str | None, obj: dict[str, Any], *, slow: bool = False) -> tuple[int, Any]:
    """Send one request; returns (exit code, reply or None) and prints errors."""
    from lmkeeperd.control.client import request

    try:
        sock, request_timeout = _socket_and_timeout(config_arg)
    except ConfigError as e:
        error(str(e))
        return BAD_USAGE, None
    # An unload is answered only once the server has unloaded, and a select once the
    # server's catalog was listed (L23): allow for a slow server.
    timeout = request_timeout + 10.0 if slow else 5.0
    try:
        reply = request(sock, obj, timeout=timeout)
    except DaemonNotRunning as e:
        error(str(e))
        return NO_DAEMON, None
    except (LmkeeperError, OSError) as e:
        error(str(e))
        return REFUSED, None
    if reply.get("ok") is not True:
        error(str(reply.get("error", reply)))
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
    code, reply = _ask(config, {"op": "status"})
    if code != OK:
        return code
    payload: Status = reply.get("status", {})
    if as_json:
        print(json.dumps(payload))
    else:
        from lmkeeperd.cli.render import render

        print(render(payload))
    return OK


def select(model: str, config: str | None = None) -> int:
    if not model.strip():
        error("select: the model key is empty")
        return BAD_USAGE
    code, reply = _ask(config, {"op": "select", "model": model}, slow=True)
    if code == OK:
        if reply.get("unchecked"):
            # L23: accepted without the catalog; the daemon checks it when the server is back.
            print(f"selected {model.strip()} (not checked yet: the server cannot be listed)")
        else:
            print(f"selected {model.strip()}")
    return code


def unload(model: str | None = None, config: str | None = None) -> int:
    obj: dict[str, Any] = {"op": "unload"}
    if model is not None:
        obj["model"] = model
    code, _ = _ask(config, obj, slow=True)
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
