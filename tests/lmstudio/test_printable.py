"""`printable`: server text made fit for status, a log line and a terminal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmkeeperd.lmstudio.transport import ERROR_CHARS, printable


def test_escape_sequences_nul_bell_and_bidi_overrides_are_replaced() -> None:
    out = printable("red\x1b[31m\x00\x07 and \u202eevil\u202c")
    assert out.isprintable() and "\x1b" not in out and "\u202e" not in out
    assert out.startswith("red\ufffd[31m") and "evil" in out


def test_undecodable_bytes_surrogateescaped_are_replaced() -> None:
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    assert printable(raw) == "caf\ufffd \ufffd"


def test_whitespace_runs_become_one_space_on_one_line() -> None:
    assert printable("  a\n\n b\t\r\nc  ") == "a b c"


def test_long_text_is_cut_with_an_ellipsis_within_the_cap() -> None:
    out = printable("x" * 10_000)
    assert len(out) == ERROR_CHARS and out.endswith("…")
    assert printable("abcdef", 4) == "abc…"


def test_plain_text_is_unchanged() -> None:
    assert printable("load of qwen/qwen3-4b failed: out of memory (HTTP 500)") == (
        "load of qwen/qwen3-4b failed: out of memory (HTTP 500)"
    )


@given(st.text())
def test_anything_comes_out_printable_and_capped(text: str) -> None:
    out = printable(text)
    assert len(out) <= ERROR_CHARS
    assert all(c.isprintable() or c == " " for c in out)
    out.encode("utf-8")  # no lone surrogates left: it encodes
