"""The `lmkeeperd` command line: parse, call, print.

    table.py     every command, argument, option and help text, and its handler
    parser.py    the argparse parser generated from the table
    output.py    the exit codes and the error and warning lines (a leaf)
    commands.py  run, status, select, unload, config check (the socket client)
    locate.py    the daemon's socket, found leniently whatever state the config is in
    waiting.py   `select --wait`: the load's outcome, with a progress line on a TTY
    listing.py   `models` and `events`
    render.py    the status object as a table for people
    estimate.py  `estimate`: what a model needs and whether it fits
    demo.py      `demo`: the daemon against the bundled emulator
    service.py   `service install | uninstall | status`
    completion.py  `completion bash|zsh|fish`, generated from the table

Every command takes the same road: the table names it, the parser reads its
options, `main` imports its handler and calls it. A handler returns the exit
code (interface.md: 0 done, 1 refused, 2 bad usage or config, 3 no daemon).
Kept lean: `lmkeeperd status` is meant to cost little more than starting Python.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def run(argv: Sequence[str]) -> int:
    """Run one command line (without the program name) and return its exit code."""
    from lmkeeperd.cli import parser

    if list(argv) == ["--version"]:  # the common case, without building argparse
        from lmkeeperd import __version__

        print(f"lmkeeperd {__version__}")
        return 0
    parsed = parser.parse(argv)  # argparse raises SystemExit itself on bad usage and -h
    if parsed.command is None:
        return parser.show_help(parsed.help_parser)
    return parser.handler(parsed.command)(**parsed.keywords)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = run(args)
    except BrokenPipeError:  # `lmkeeperd status | head`: the reader left, that is fine
        code = 0
        # Python flushes stdout again at exit; point it at nothing so that does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)
