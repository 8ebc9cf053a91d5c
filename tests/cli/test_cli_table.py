"""The command table (cli/table.py) and the two parsers generated from it.

Every row must parse alike through the quick parser (what a plain call takes)
and through the argparse tree (help and errors), and its handler must take
exactly the keywords the row produces.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmkeeperd.cli import parser, table
from lmkeeperd.cli.table import Command, Group, Opt

SAMPLE = {"str": "some-value", "int": "7", "float": "1.5"}


def rows() -> Iterator[tuple[list[str], Command]]:
    for entry in table.COMMANDS:
        if isinstance(entry, Command):
            yield [entry.name], entry
        else:
            for command in entry.commands:
                yield [entry.name, command.name], command


ROWS = list(rows())
IDS = [" ".join(words) for words, _ in ROWS]


def full_argv(command: Command) -> list[str]:
    """Every argument and every option of `command`, options first, then positionals."""
    argv: list[str] = []
    for opt in command.opts:
        argv += [opt.flag] if opt.kind == "flag" else [opt.flag, SAMPLE[opt.kind]]
    return argv + [f"{arg.dest}-value" for arg in command.args]


def via_full_tree(words: list[str], rest: list[str]) -> parser.Parsed:
    namespace = parser.full_parser().parse_args([*words, *rest])
    values = vars(namespace)
    command = values.pop("_command")
    values.pop("_help", None)
    values.pop("_parser", None)
    return parser.Parsed(command, values)


def spellings(command: Command) -> list[list[str]]:
    """Plain command lines for `command`: the bare minimum, everything, `--opt=value`,
    positionals first, and an option given twice (the last one counts)."""
    required = [f"{a.dest}-value" for a in command.args if not a.optional]
    every = full_argv(command)
    lines = [required, every]
    equals = [f"{o.flag}={SAMPLE[o.kind]}" if o.kind != "flag" else o.flag for o in command.opts]
    lines.append([f"{a.dest}-value" for a in command.args] + equals)
    valued = [o for o in command.opts if o.kind != "flag"]
    if valued:
        lines.append([*required, valued[0].flag, SAMPLE[valued[0].kind], valued[0].flag, "9"])
    return lines


@pytest.mark.parametrize(("words", "command"), ROWS, ids=IDS)
def test_every_command_parses_the_same_through_both_parsers(
    words: list[str], command: Command
) -> None:
    for rest in spellings(command):
        quick = parser.quick(command, rest)
        tree = via_full_tree(words, rest)
        assert quick is not None, rest  # plain forms never need argparse
        assert tree.command is command
        assert quick == tree.keywords, rest
        assert parser.parse([*words, *rest]).keywords == quick


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "-h"],
        ["status", "--js"],  # argparse's abbreviation
        ["status", "--json=yes"],
        ["select"],
        ["select", "a", "b"],
        ["select", "--config"],
        ["select", "--config", "--json", "a"],
        ["estimate", "m", "--context", "abc"],
        ["demo", "--load-delay", "-1"],  # a negative number, argparse's rules
        ["select", "--", "-weird"],
        ["unload", "-x"],
    ],
)
def test_anything_but_a_plain_form_goes_to_argparse(argv: list[str]) -> None:
    found = table.find(argv)
    assert found is not None
    command, depth = found
    assert parser.quick(command, argv[depth:]) is None
    try:
        expected: object = vars(parser.full_parser().parse_args(argv))
    except SystemExit as e:
        expected = e.code
    try:
        got: object = parser.parse(argv).keywords
        assert isinstance(expected, dict)
        expected.pop("_command")
        expected.pop("_help", None)
        expected.pop("_parser", None)
    except SystemExit as e:
        got = e.code
    assert got == expected


@pytest.mark.parametrize(("words", "command"), ROWS, ids=IDS)
def test_every_option_reaches_the_handler_as_its_keyword(
    words: list[str], command: Command
) -> None:
    keywords = parser.parse([*words, *full_argv(command)]).keywords
    for opt in command.opts:
        expected = {"flag": True, "str": "some-value", "int": 7, "float": 1.5}[opt.kind]
        assert keywords[opt.dest] == expected, opt.flag
    for arg in command.args:
        assert keywords[arg.dest] == f"{arg.dest}-value"
    defaults = parser.parse([*words, *(f"{a.dest}-x" for a in command.args if not a.optional)])
    for opt in command.opts:
        assert defaults.keywords[opt.dest] == opt.default


@pytest.mark.parametrize(("words", "command"), ROWS, ids=IDS)
def test_every_handler_takes_exactly_its_rows_keywords(words: list[str], command: Command) -> None:
    function = parser.handler(command)
    params = inspect.signature(function).parameters
    produced = {a.dest for a in command.args} | {o.dest for o in command.opts}
    assert set(params) == produced, command.handler
    for arg in command.args:
        # What the parser may leave out must have a default, and only that.
        has_default = params[arg.dest].default is not inspect.Parameter.empty
        assert has_default == arg.optional, arg.dest
    for opt in command.opts:
        assert params[opt.dest].default == opt.default


def test_find_names_each_row_and_nothing_else() -> None:
    for words, command in ROWS:
        assert table.find([*words, "--json"]) == (command, len(words))
    for words in ([], ["bogus"], ["service"], ["service", "bogus"], ["config"], ["--help"]):
        assert table.find(words) is None, words


def test_options_are_unique_per_command_and_hidden_ones_stay_out_of_help() -> None:
    for words, command in ROWS:
        flags = [o.flag for o in command.opts]
        dests = [o.dest for o in command.opts] + [a.dest for a in command.args]
        assert len(set(flags)) == len(flags) and len(set(dests)) == len(dests), words
        shown = subparser(words).format_help()
        for opt in command.opts:
            assert (opt.flag in shown) != opt.hidden, (words, opt.flag)
    top = parser.full_parser().format_help()
    for entry in table.COMMANDS:
        hidden = isinstance(entry, Command) and entry.hidden
        assert (entry.name in top) != hidden, entry.name


def subparser(words: list[str]) -> argparse.ArgumentParser:
    """The argparse parser of one row, out of the whole tree."""
    found: argparse.ArgumentParser = parser.full_parser()
    for word in words:
        actions = [a for a in found._actions if isinstance(a, argparse._SubParsersAction)]
        found = actions[0].choices[word]
    return found


def test_a_new_option_needs_one_line_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    status = next(c for w, c in ROWS if w == ["status"])
    wait = Opt("--wait", "Wait.", "flag")
    extended = Command(status.name, status.help, status.handler, status.args, (*status.opts, wait))
    entries = tuple(extended if e is status else e for e in table.COMMANDS)
    monkeypatch.setattr(parser, "COMMANDS", entries)
    monkeypatch.setattr(table, "COMMANDS", entries)
    assert parser.parse(["status", "--wait"]).keywords["wait"] is True
    assert via_full_tree(["status"], ["--wait"]).keywords["wait"] is True
    assert "--wait" in subparser(["status"]).format_help()


def test_a_group_alone_or_nothing_shows_help_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lmkeeperd.cli import run

    for words, expected in (([], "commands:"), (["service"], "install"), (["config"], "check")):
        assert run(words) == 2
        out = capsys.readouterr().out
        assert "usage: lmkeeperd" in out and expected in out, words


def test_groups_hold_commands_only() -> None:
    for entry in table.COMMANDS:
        if isinstance(entry, Group):
            assert entry.commands and all(isinstance(c, Command) for c in entry.commands)


def _closed_stdout_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`lmkeeperd ARGS | (reader that already left)`: stdout is a pipe with no reader."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "lmkeeperd", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [["service", "install", "--dry-run", "--platform", "linux"], ["--help"], ["status", "--help"]],
)
def test_a_reader_that_left_is_not_an_error_for_any_command(
    args: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("LMKEEPERD_CONFIG", None)
    result = _closed_stdout_run(args, env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_config_check_treats_the_environment_variable_as_naming_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    env = {**os.environ, "LMKEEPERD_CONFIG": str(missing), "XDG_CONFIG_HOME": str(tmp_path)}
    named = subprocess.run(
        [sys.executable, "-m", "lmkeeperd", "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert named.returncode == 2 and "nope.toml" in named.stderr
    env["LMKEEPERD_CONFIG"] = ""
    default = subprocess.run(
        [sys.executable, "-m", "lmkeeperd", "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert default.returncode == 0 and "every default applies" in default.stdout
