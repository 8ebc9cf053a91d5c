"""The API token as a value that never shows itself.

`Secret` hides its value from repr, str, format and so from logs (structlog renders
values with repr), error messages and a traceback's locals. The raw value comes out only
through `reveal()` and `bearer()`, called where the token is sent, and `scrub()` removes it
from text that came back from a server before that text is quoted anywhere.

A leaf module (stdlib only): the client and the proxy both hold the token in one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

_MASK: Final = "***"


class Secret:
    """A string that shows itself as `***`; only `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] = os.environ) -> Secret | None:
        """The token in env var `name`; None when unset, blank, or not fit for a header.

        Surrounding whitespace is dropped (a pasted token often ends in a newline). A value
        with characters an HTTP header cannot carry (control characters, non-ASCII) cannot
        be sent at all, so it counts as no token.
        """
        value = environ.get(name, "").strip()
        if not value or not all(" " <= c <= "~" for c in value):
            return None
        return cls(value)

    @classmethod
    def of(cls, value: Secret | str | None) -> Secret | None:
        """`value` as a Secret; None for None or an empty string."""
        if isinstance(value, Secret):
            return value
        return cls(value) if value else None

    def reveal(self) -> str:
        """The raw value: call this only where the token is sent."""
        return self._value

    def bearer(self) -> str:
        """The value of an `Authorization` header carrying this token."""
        return "Bearer " + self._value

    def scrub(self, text: str) -> str:
        """`text` with every occurrence of the value replaced by `***`."""
        return text.replace(self._value, _MASK)

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        # object.__format__ would use str() but raise on any non-empty spec; a log line
        # or a message with f"{token:>20}" must neither crash nor show the value.
        return _MASK
