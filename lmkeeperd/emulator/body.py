"""Reading a request body: Content-Length or chunked, capped; then its JSON, if any."""

from __future__ import annotations

import json
from email.message import Message
from io import BufferedIOBase
from typing import Any

MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyError(Exception):
    """The body cannot be read: answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def read_body(headers: Message, rfile: BufferedIOBase) -> bytes:
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        return _read_chunked(rfile)
    length_header = headers.get("Content-Length")
    if length_header is None:
        return b""
    try:
        length = int(length_header)
    except ValueError:
        raise BodyError(400, "invalid Content-Length header") from None
    if length < 0:
        raise BodyError(400, "invalid Content-Length header")
    if length > MAX_BODY_BYTES:
        raise BodyError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    return rfile.read(length)


def _read_chunked(rfile: BufferedIOBase) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise BodyError(400, "malformed chunked request body") from None
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise BodyError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        parts.append(rfile.read(size))
        rfile.readline(1024)


def parse_json(raw: bytes) -> tuple[Any, bool]:
    """(decoded JSON or None, whether it was valid); an empty body is valid and None."""
    if not raw.strip():
        return None, True
    try:
        return json.loads(raw), True
    except (ValueError, UnicodeDecodeError):
        return None, False
