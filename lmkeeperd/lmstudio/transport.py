"""Reading LM Studio's answers off the wire: capped bodies, readable transport errors.

Pure helpers of the client (lmstudio/client.py); they never see the API token.
"""

from __future__ import annotations

import errno as errno_codes
import os
from typing import Any

import httpx

_SNIPPET_CHARS = 200
ERROR_CHARS = 600
"""The longest error text lmkeeperd keeps: a server's words quoted in it are cut to 200."""


def printable(text: str, cap: int = ERROR_CHARS) -> str:
    """`text` fit for a log line, `status` and a terminal: one line, no control characters.

    Server text enters errors here. Whitespace runs become one space; every character
    Python does not call printable (controls and escape sequences, NUL, bidi overrides,
    lone surrogates from undecodable bytes, unassigned code points) becomes U+FFFD, so
    nothing a server sends can move a terminal's cursor or hide text; at most `cap`
    characters are kept.
    """
    flat = " ".join(text.split())
    if not flat.isprintable():
        flat = "".join(c if c.isprintable() else "\ufffd" for c in flat)
    return flat if len(flat) <= cap else flat[: cap - 1] + "…"


class TooBig(Exception):
    """A body larger than the cap; the message says how large ("a body of N bytes")."""

    def __init__(self, size: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(size)


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """The (decoded) body of a streamed response, or TooBig once it passes `cap` bytes.

    Streaming keeps a runaway server from inflating the daemon: at most `cap` plus
    one chunk is ever held.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise TooBig(f"a body of {int(declared)} bytes", response.status_code)
    parts: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > cap:
            raise TooBig("a body that kept growing", response.status_code)
        parts.append(chunk)
    return b"".join(parts)


def decoded(response: httpx.Response) -> Any:
    """A read response's body as JSON, or None when it is not JSON."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def describe(
    error: httpx.TransportError,
    method: str,
    path: str,
    timeout: httpx.Timeout,
    default_timeout: float,
) -> str:
    """A short reason for a transport error ("connection refused", "... timed out after 5s").

    The caller scrubs the token out of it: httpx's text may quote the request.
    """
    if isinstance(error, httpx.TimeoutException):
        limit = {
            httpx.ReadTimeout: timeout.read,
            httpx.WriteTimeout: timeout.write,
            httpx.PoolTimeout: timeout.pool,
        }.get(type(error), timeout.connect)
        return f"{method} {path} timed out after {limit or default_timeout:g}s"
    # httpx wraps httpcore's error, which wraps the OSError with the real cause.
    cause: BaseException | None = error
    for _ in range(6):
        if cause is None:
            break
        code = cause.errno if isinstance(cause, OSError) else None
        if code is not None and code in errno_codes.errorcode:
            return os.strerror(code).lower()
        cause = cause.__cause__ or cause.__context__
    text = printable(str(error))
    if text.startswith("[Errno"):
        text = text.partition("]")[2].strip()
    text = text[:1].lower() + text[1:]
    return text[:_SNIPPET_CHARS] or type(error).__name__
