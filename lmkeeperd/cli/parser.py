"""The stdlib parser, generated from the command table (cli/table.py).

One generator, two ways to use it. A call that names a command
(`lmkeeperd status --json`) builds that command's parser only; anything else
(no command, `-h` at the top, an unknown word, a group without its
subcommand) builds the whole tree, whose help lists every command. Both add
each argument and option through `_add_command`, so they parse alike; tests
check that for every row of the table.

argparse rather than typer: typer with click and rich costs ~60 ms of imports
on every call, several times Python's own start-up, while argparse costs ~2 ms
once `re` is loaded (which reading a config needs anyway); see
bench/bench_status_cli.py and the closing note of issue 12.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmkeeperd.cli.table import COMMANDS, DESCRIPTION, PROG, Command, Group, Opt, find

Handler = Callable[..., int]
_TYPES: Mapping[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


class Parsed:
    """A command and the keywords its handler takes; or help to print and an exit code."""

    def __init__(
        self,
        command: Command | None,
        keywords: dict[str, Any],
        help_parser: argparse.ArgumentParser | None = None,
    ) -> None:
        self.command = command
        self.keywords = keywords
        self.help_parser = help_parser


def _summary(text: str) -> str:
    return text.split("\n", 1)[0]


def _add_option(parser: argparse.ArgumentParser, opt: Opt) -> None:
    help_text = argparse.SUPPRESS if opt.hidden else opt.help
    if opt.kind == "flag":
        parser.add_argument(opt.flag, dest=opt.dest, action="store_true", help=help_text)
        return
    parser.add_argument(
        opt.flag,
        dest=opt.dest,
        type=_TYPES[opt.kind],
        default=opt.default,
        metavar=opt.metavar or opt.dest.upper(),
        help=help_text
        if opt.hidden or opt.default is None
        else f"{opt.help} (default: %(default)s)",
    )


def _add_command(parser: argparse.ArgumentParser, command: Command) -> None:
    for arg in command.args:
        parser.add_argument(
            arg.dest, metavar=arg.metavar, help=arg.help, nargs="?" if arg.optional else None
        )
    for opt in command.opts:
        _add_option(parser, opt)
    parser.set_defaults(_command=command)


def _new(prog: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, **kwargs)


def command_parser(command: Command, words: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of one command; `words` name it (["service", "install"])."""
    parser = _new(" ".join((PROG, *words)), command.help)
    _add_command(parser, command)
    return parser


def full_parser() -> argparse.ArgumentParser:
    """Every command of the table, for the top-level help and for errors."""
    top = _new(PROG, DESCRIPTION)
    top.set_defaults(_help=top)
    commands = top.add_subparsers(metavar="COMMAND", title="commands")
    for entry in COMMANDS:
        sub = commands.add_parser(
            entry.name,
            help=_summary(entry.help),
            description=entry.help,
            prog=f"{PROG} {entry.name}",
        )
        if isinstance(entry, Command):
            _add_command(sub, entry)
            continue
        sub.set_defaults(_help=sub)
        _add_group(sub, entry)
    return top


def _add_group(parser: argparse.ArgumentParser, group: Group) -> None:
    commands = parser.add_subparsers(metavar="COMMAND", title="commands")
    for command in group.commands:
        sub = commands.add_parser(
            command.name,
            help=_summary(command.help),
            description=command.help,
            prog=f"{PROG} {group.name} {command.name}",
        )
        _add_command(sub, command)


def parse(argv: Sequence[str]) -> Parsed:
    """Parse `argv` (without the program name); argparse exits 2 on bad usage, 0 on -h."""
    words = list(argv)
    found = find(words)
    if found is not None:
        command, depth = found
        namespace = command_parser(command, words[:depth]).parse_args(words[depth:])
    else:
        namespace = full_parser().parse_args(words)
    values = vars(namespace)
    chosen: Command | None = values.pop("_command", None)
    help_parser: argparse.ArgumentParser | None = values.pop("_help", None)
    if chosen is None:  # `lmkeeperd` or `lmkeeperd service` alone: show what there is
        return Parsed(None, {}, help_parser)
    return Parsed(chosen, values)


def handler(command: Command) -> Handler:
    """The function a row names, imported now (and only now)."""
    module_name, _, function = command.handler.partition(":")
    found: Handler = getattr(importlib.import_module(module_name), function)
    return found


def show_help(parser: argparse.ArgumentParser | None) -> int:
    """What `lmkeeperd` alone does: the help on stdout, and exit 2 (bad usage)."""
    (parser or full_parser()).print_help(sys.stdout)
    return 2
