"""The `lmkeeperd` command line: parse, call, print.

`main()` first tries a fast path for the commands scripts and editors call
often (`status`, `select`, `unload`) in their plain forms: those need only the
standard library and a socket, and importing typer (with click and rich)
would cost several times Python's own start-up. `run` takes the same path, so
that the daemon does not carry typer in its memory. Everything else, including
every `--help`, goes to the typer app below, which defines the same commands
on the same functions (lmkeeperd.commands).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def _fast(argv: Sequence[str]) -> int | None:
    """Run a plain run/status/select/unload without typer; None when argv is anything else."""
    if not argv or argv[0] not in ("run", "status", "select", "unload"):
        return None
    command, rest = argv[0], list(argv[1:])
    config: str | None = None
    as_json = False
    positional: list[str] = []
    while rest:
        arg = rest.pop(0)
        if arg == "--config" and rest:
            config = rest.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--json" and command == "status":
            as_json = True
        elif arg.startswith("-"):
            return None  # --help and friends: typer says it best
        else:
            positional.append(arg)
    if command == "run":
        # The daemon lives for days: typer (with click, pydantic and rich) would stay in its
        # memory for nothing, about 10 MiB of its resident set.
        return None if positional else _run_daemon(config)
    from lmkeeperd import commands

    if command == "status" and not positional:
        return commands.status(config, as_json)
    if command == "select" and len(positional) == 1:
        return commands.select(config, positional[0])
    if command == "unload" and len(positional) <= 1:
        return commands.unload(config, positional[0] if positional else None)
    return None


def _run_daemon(config: str | None) -> int:
    from lmkeeperd.daemon import run
    from lmkeeperd.paths import config_path

    try:
        return run(config_path(config))
    except BrokenPipeError:
        return 1  # its log's reader went away: a failure, unlike `status | head` in main()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _fast(args)
    except BrokenPipeError:  # `lmkeeperd status | head`: the reader left, that is fine
        code = 0
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if code is not None:
        sys.exit(code)
    from lmkeeperd.cli_app import app

    app(args=args, prog_name="lmkeeperd")
