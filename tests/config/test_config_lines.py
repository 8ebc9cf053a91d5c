"""Which line a problem is about: keys in tables, dotted, quoted, inline; TOML syntax errors
(config/lines.py)."""

from __future__ import annotations

import pytest

from lmkeeperd.config import parse_config
from lmkeeperd.errors import ConfigError


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


# ---------------------------------------------------------------- lines of values


def test_lines_are_found_for_inline_tables_dotted_and_quoted_keys() -> None:
    text = (
        "[server]\n"
        'note = """\n'
        "auto_load = 1\n"  # a look-alike inside a multi-line string
        '"""\n'
        "[ model ]\n"
        '"unload_on_exit" = "no"\n'
        "load.flash_attention = 1\n"
    )
    problems = problems_of(text)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        ["line 2", "server.note"],
        ["line 6", "model.unload_on_exit"],
        ["line 7", "model.load.flash_attention"],
    ]
    # No line of its own: the line of the inline table it is in.
    (problem,) = problems_of('\nmodel = { auto_load = "yes" }\n')
    assert problem.startswith("line 2: model.auto_load: expected true/false")


def test_problems_without_a_findable_line_have_no_line() -> None:
    text = '[model]\n"auto.load" = 1\n'  # a quoted key with a dot defeats the scan
    (problem,) = problems_of(text)
    assert problem.startswith("model.auto.load: unknown key")


# ---------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("[model]\nauto_load = yes\n", "line 2, column 13: not valid TOML: "),
        ("[model]\nselected = 'a'\nselected = 'b'\n", "line 3, column "),
        ('[model]\nselected = "unterminated\n', "line 2, column "),
        ("[model]\nauto_load = [true,\n", "line 2 (end of file): not valid TOML: "),
        ("a = " + "[" * 3000 + "]" * 3000, "not valid TOML: arrays or tables nested too deeply"),
        ("a = " + "1" * 5000, "not valid TOML: "),
    ],
)
def test_toml_syntax_error_carries_the_line(text: str, start: str) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith(start)
