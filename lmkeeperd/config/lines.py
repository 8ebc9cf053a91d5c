"""The TOML line finder: which line of the file a problem is about.

tomllib reports a position only for syntax errors. For problems with values, the line is
found by scanning the text for the key inside its table (`[model]` then `auto_load = ...`,
or a dotted `model.auto_load = ...`); that scan is a best effort that handles the usual
layouts, and falls back to the line of the enclosing inline table when the key itself is
not on a line of its own.
"""

from __future__ import annotations

import re
import tomllib

_HEADER_RE = re.compile(r"\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?")
_KEY_RE = re.compile(
    r"\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_KEY_PART_RE = re.compile(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'")


def _key_parts(raw: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in _KEY_PART_RE.findall(raw))


def find_line(text: str, dotted: str) -> int | None:
    """The 1-based line where `dotted` is set, or where its enclosing inline table is."""
    target = tuple(dotted.split("."))
    table: tuple[str, ...] = ()
    in_multiline = False
    enclosing: tuple[int, int] | None = None  # (depth, line) of the deepest enclosing key
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            in_multiline = (line.count('"""') + line.count("'''")) % 2 == 0
            continue
        if header := _HEADER_RE.fullmatch(line):
            table = _key_parts(header.group(1))
            if table == target:
                return number
            continue
        key = _KEY_RE.match(line)
        if key is None:
            continue
        in_multiline = (line.count('"""') + line.count("'''")) % 2 == 1
        full = table + _key_parts(key.group(1))
        if full == target:
            return number
        # A key set as `load = { ... }` is inside that line; a [table] header alone
        # would be too vague a pointer.
        if target[: len(full)] == full and (enclosing is None or len(full) > enclosing[0]):
            enclosing = (len(full), number)
    return enclosing[1] if enclosing else None


def with_line(text: str, dotted: str, problem: str) -> str:
    line = find_line(text, dotted)
    return f"line {line}: {problem}" if line is not None else problem


_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def syntax_problem(error: tomllib.TOMLDecodeError, text: str) -> str:
    message = str(error)
    if message.endswith(" (at end of document)"):
        what = message.removesuffix(" (at end of document)")
        return f"line {max(1, len(text.splitlines()))} (end of file): not valid TOML: {what}"
    where = _TOML_POSITION_RE.search(message)
    if where is None:
        return f"not valid TOML: {message}"
    what = message[: where.start()]
    return f"line {where.group(1)}, column {where.group(2)}: not valid TOML: {what}"


# ---------------------------------------------------------------- entry points
