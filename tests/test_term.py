"""The one colour rule (lmkeeperd/term.py): NO_COLOR, FORCE_COLOR, a terminal, TERM=dumb."""

from __future__ import annotations

import io
import os

import pytest

from lmkeeperd.logs import people_value
from lmkeeperd.term import use_color


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"TERM": "dumb"}, True, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": ""}, True, True),  # set but empty: no-color.org says ignore it
        ({"FORCE_COLOR": "1"}, False, True),
        ({"FORCE_COLOR": "0"}, False, False),
        ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False, False),
        ({"FORCE_COLOR": "1", "TERM": "dumb"}, False, True),
    ],
)
def test_use_color(env: dict[str, str], tty: bool, expected: bool) -> None:
    stream = Tty() if tty else io.StringIO()
    assert use_color(stream, env) is expected


def test_a_closed_stream_gets_no_colour() -> None:
    with open(os.devnull, "w") as stream:
        pass
    assert use_color(stream, {}) is False  # isatty() on a closed file raises ValueError


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "-"),
        (False, "false"),
        (True, "true"),
        (3, "3"),
        (1.5, "1.5"),
        ("qwen/qwen3-4b", "qwen/qwen3-4b"),
        ("two words", '"two words"'),
        ("it's", '"it\'s"'),
        ("", '""'),
        (["a", "b"], '["a","b"]'),
        ({"k": None}, '{"k":null}'),
    ],
)
def test_console_values_are_values_not_reprs(value: object, shown: str) -> None:
    assert people_value(value) == shown
