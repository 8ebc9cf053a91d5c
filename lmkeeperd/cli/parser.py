"""The parsers, both generated from the command table (cli/table.py).

`quick` reads the plain forms every script and editor uses (`status --json`,
`select MODEL --config=PATH`): known options, their values, the positionals.
Anything else (`-h`, an unknown or abbreviated option, a missing argument, a
value that does not convert, no command at all) goes to the argparse tree
built by `full_parser`, which prints the help and the usage errors. Both read
the same rows, so an option is added once; tests/cli/test_cli_table.py checks
that every row parses alike through both.

Why two: argparse (with gettext) costs ~3-4 ms to import on every call, a
noticeable part of the 2.5x-of-`python -c pass` budget set for
`lmkeeperd status`; typer, the former full parser, cost ~60 ms (with click and
rich). Figures: bench/bench_status_cli.py and docs/performance.md.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence

from lmkeeperd.cli.table import (
    COMMANDS,
    DESCRIPTION,
    ERROR_PREFIX,
    PROG,
    Command,
    Group,
    Opt,
    find,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn

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
    import argparse

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
    parser.set_defaults(_command=command, _parser=parser)


def full_parser() -> argparse.ArgumentParser:
    """Every command of the table, for the help and for errors."""
    import argparse

    from lmkeeperd import __version__

    hidden = [e.name for e in COMMANDS if isinstance(e, Command) and e.hidden]

    class Formatter(argparse.HelpFormatter):
        """Wraps each line of a description on its own: the table's help texts keep their
        paragraphs and indented examples (argparse's own formatter joins them)."""

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            lines = []
            for line in text.splitlines():
                keep = line.startswith("  ") or not line
                lines.append(indent + line if keep else super()._fill_text(line, width, indent))
            return "\n".join(lines)

    class Parser(argparse.ArgumentParser):
        """argparse with the CLI's one error prefix (its own is `PROG CMD: error:`)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", Formatter)
            super().__init__(*args, **kwargs)

        def error(self, message: str) -> NoReturn:
            for name in hidden:  # argparse lists every choice in "invalid choice" errors
                message = message.replace(f", '{name}'", "").replace(f"'{name}', ", "")
            self.print_usage(sys.stderr)
            self.exit(2, f"{ERROR_PREFIX}{message} (see `{self.prog} -h`)\n")

    # Subparsers are made of the same class as their parent (add_subparsers' default).
    top = Parser(prog=PROG, description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    top.set_defaults(_help=top)
    commands = top.add_subparsers(metavar="COMMAND", title="commands")
    for entry in COMMANDS:
        if isinstance(entry, Command) and entry.hidden:  # for the shell completions only
            sub = commands.add_parser(entry.name, prog=f"{PROG} {entry.name}")
            _add_command(sub, entry)
            continue
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


def quick(command: Command, rest: Sequence[str]) -> dict[str, Any] | None:
    """The keywords for `rest` in a plain form; None for anything argparse should judge."""
    by_flag = {opt.flag: opt for opt in command.opts}
    values: dict[str, Any] = {opt.dest: opt.default for opt in command.opts}
    positionals: list[str] = []
    words = list(rest)
    while words:
        word = words.pop(0)
        if not word.startswith("-") or word == "-":
            positionals.append(word)
            continue
        flag, has_value, value = word.partition("=")
        opt = by_flag.get(flag)
        if opt is None:  # -h, --, an abbreviation, a typo
            return None
        if opt.kind == "flag":
            if has_value:
                return None
            values[opt.dest] = True
            continue
        if not has_value:
            # A value that looks like an option is argparse's call (it refuses most).
            if not words or words[0].startswith("-"):
                return None
            value = words.pop(0)
        try:
            values[opt.dest] = _TYPES[opt.kind](value)
        except ValueError:
            return None
    required = sum(1 for arg in command.args if not arg.optional)
    if not required <= len(positionals) <= len(command.args):
        return None
    for index, arg in enumerate(command.args):
        values[arg.dest] = positionals[index] if index < len(positionals) else None
    return values


def parse(argv: Sequence[str]) -> Parsed:
    """Parse `argv` (without the program name); argparse exits 2 on bad usage, 0 on -h."""
    words = list(argv)
    found = find(words)
    if found is not None:
        command, depth = found
        keywords = quick(command, words[depth:])
        if keywords is not None:
            return Parsed(command, keywords)
    top = full_parser()
    namespace, extras = top.parse_known_args(words)
    values = vars(namespace)
    chosen: Command | None = values.pop("_command", None)
    help_parser: argparse.ArgumentParser | None = values.pop("_help", None)
    # The command's own parser says what it did not recognise, with its own usage line.
    judge: argparse.ArgumentParser = values.pop("_parser", None) or top
    if extras:
        judge.error(f"unrecognized arguments: {' '.join(extras)}")
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
