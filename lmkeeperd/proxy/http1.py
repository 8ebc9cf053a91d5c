"""HTTP/1.1 message heads and bodies, parsed and written without any I/O.

Theory of operation
-------------------
In the spirit of h11, this module owns no sockets: the connection code reads
bytes into a `bytearray` and hands it here. `split_head` takes one complete
head (up to the blank line) off the front of that buffer; `parse_request` and
`parse_response` turn it into a `Request` or `Response`, validated the way
RFC 9112 asks of a proxy, or raise `HttpError` with the status to answer.
Each head says how its body is framed (`Framing`); a `BodyDecoder` then takes
body bytes off the buffer as they arrive and says when the body is complete,
leaving whatever follows (the next message) in the buffer.

Why not h11 itself: the proxy sits on the path of every request, and h11's
per-event bookkeeping was about half of the proxy's CPU time per request in
`bench/bench_proxy.py`. A proxy needs much less than a general HTTP library:
heads are checked, never interpreted beyond framing, and bodies pass through.

What is refused (all things a request smuggler or a broken peer would send):
a head over `MAX_HEAD_BYTES`; a request line or header line that does not
parse; whitespace before a header's colon; obsolete line folding; control
characters in values; a message with both Transfer-Encoding and
Content-Length; a Transfer-Encoding other than `chunked`; Content-Length
values that differ or are not digits; a malformed chunk.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_BYTES = 16 * 1024

Headers = list[tuple[bytes, bytes]]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_OTHER_VERSION = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/[0-9]\.[0-9]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_ABSOLUTE = re.compile(rb"https?://[^/?#]*", re.IGNORECASE)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")

# Headers that describe one connection, not the message: never forwarded
# (RFC 9110 7.6.1). Transfer-Encoding is set anew for each hop; Host names the
# server a request goes to.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
    }
)


class HttpError(Exception):
    """A message that must be refused; `status` is the answer a client gets."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Framing(enum.Enum):
    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # until the connection closes (responses only)


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: bytes
    minor: int  # HTTP/1.<minor>
    headers: Headers  # as received: names in their original case
    names: tuple[bytes, ...]  # the header names in lowercase, in the same order
    framing: Framing
    length: int  # with Framing.LENGTH
    keep_alive: bool
    expects_continue: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (given in lowercase), or None."""
        return _first(self.headers, self.names, name)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: bytes
    minor: int
    headers: Headers
    names: tuple[bytes, ...]
    framing: Framing
    length: int
    keep_alive: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (given in lowercase), or None."""
        return _first(self.headers, self.names, name)


def _first(headers: Headers, names: tuple[bytes, ...], name: bytes) -> bytes | None:
    try:
        return headers[names.index(name)][1]
    except ValueError:
        return None


def split_head(buffer: bytearray) -> bytes | None:
    """Take one complete head off the front of `buffer` (None: not all there yet)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HttpError("request head too large", 431)
        return None
    if end > MAX_HEAD_BYTES:
        raise HttpError("request head too large", 431)
    head = bytes(buffer[:end])
    del buffer[: end + 4]
    return head


def _lines(head: bytes) -> tuple[bytes, Headers, tuple[bytes, ...]]:
    # Tolerate blank lines before a message (RFC 9112 2.2) but nothing else odd.
    first, *rest = head.lstrip(b"\r\n").split(b"\r\n")
    headers: Headers = []
    for line in rest:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise HttpError("malformed header line")
        headers.append((match[1], match[2]))
    return first, headers, tuple(name.lower() for name, _ in headers)


def _framing(headers: Headers, names: tuple[bytes, ...]) -> tuple[Framing, int]:
    encodings: list[bytes] = []
    lengths: set[bytes] = set()
    for low, (_, value) in zip(names, headers, strict=True):
        if low == b"transfer-encoding":
            encodings += [v.strip().lower() for v in value.split(b",") if v.strip()]
        elif low == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
    if encodings:
        if lengths:
            raise HttpError("both Transfer-Encoding and Content-Length")
        if encodings != [b"chunked"]:
            raise HttpError("unsupported Transfer-Encoding", 501)
        return Framing.CHUNKED, 0
    if lengths:
        if len(lengths) != 1:
            raise HttpError("conflicting Content-Length values")
        (value,) = lengths
        if _DIGITS.fullmatch(value) is None:
            raise HttpError("bad Content-Length")
        return Framing.LENGTH, int(value)
    return Framing.NONE, 0


def _tokens(headers: Headers, names: tuple[bytes, ...], name: bytes) -> set[bytes]:
    if name not in names:
        return set()
    return {
        token.strip().lower()
        for low, (_, value) in zip(names, headers, strict=True)
        if low == name
        for token in value.split(b",")
    }


def parse_request(head: bytes) -> Request:
    first, headers, names = _lines(head)
    match = _REQUEST_LINE.fullmatch(first)
    if match is None:
        if _OTHER_VERSION.fullmatch(first):
            raise HttpError("only HTTP/1.0 and HTTP/1.1 are served", 505)
        raise HttpError("malformed request line")
    minor = int(match[3])
    framing, length = _framing(headers, names)
    connection = _tokens(headers, names, b"connection")
    target = match[2]
    if absolute := _ABSOLUTE.match(target):
        # "GET http://host/path": the form sent to a forward proxy, which a server must
        # accept too (RFC 9112 3.2.2). The upstream gets the path; Host is ours to set.
        target = target[absolute.end() :] or b"/"
        if not target.startswith(b"/"):
            target = b"/" + target
    return Request(
        method=match[1],
        target=target,
        minor=minor,
        headers=headers,
        names=names,
        framing=framing,
        length=length,
        # HTTP/1.0 keep-alive is a pre-1.1 extension: not worth supporting here.
        keep_alive=minor == 1 and b"close" not in connection,
        expects_continue=minor == 1 and b"100-continue" in _tokens(headers, names, b"expect"),
    )


def parse_response(head: bytes, request_method: bytes) -> Response:
    first, headers, names = _lines(head)
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise HttpError("malformed status line", 502)
    status = int(match[2])
    try:
        framing, length = _framing(headers, names)
    except HttpError as e:
        raise HttpError(str(e), 502) from None
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        framing, length = Framing.NONE, 0
    elif framing is Framing.NONE:
        framing = Framing.CLOSE  # neither header: the body ends when the server closes
    minor = int(match[1])
    return Response(
        status=status,
        reason=match[3] or b"",
        minor=minor,
        headers=headers,
        names=names,
        framing=framing,
        length=length,
        keep_alive=minor == 1
        and framing is not Framing.CLOSE
        and b"close" not in _tokens(headers, names, b"connection"),
    )


def end_to_end(headers: Headers, names: tuple[bytes, ...] | None = None) -> Headers:
    """`headers` without hop-by-hop ones (nor those the Connection header names).

    `names`: the header names in lowercase, when the caller has them already.
    """
    if names is None:
        names = tuple(name.lower() for name, _ in headers)
    drop = HOP_BY_HOP | _tokens(headers, names, b"connection")
    return [pair for low, pair in zip(names, headers, strict=True) if low not in drop]


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    lines += [b"%s: %s\r\n" % pair for pair in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % pair for pair in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (empty data would end the body: not allowed)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class BodyDecoder:
    """Takes one message's body off a buffer, as its bytes arrive.

    `take(buffer)` removes what belongs to the body from the front of
    `buffer` and returns the body bytes in it (without chunk framing);
    `done` tells when the body is complete. Bytes after the body stay in the
    buffer. `eof()` says the peer closed: the end of a close-delimited body,
    an error for any other.
    """

    __slots__ = ("_framing", "_remaining", "_state", "_trailer", "done")

    def __init__(self, framing: Framing, length: int = 0) -> None:
        self._framing = framing
        self._remaining = length  # bytes left of the body, or of the current chunk
        self._state = "size"  # chunked: size | data | crlf | trailer
        self._trailer = 0
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)

    def take(self, buffer: bytearray) -> bytes:
        if self.done or not buffer:
            return b""
        if self._framing is Framing.CLOSE:
            data = bytes(buffer)
            buffer.clear()
            return data
        if self._framing is Framing.LENGTH:
            data = bytes(buffer[: self._remaining])
            del buffer[: len(data)]
            self._remaining -= len(data)
            self.done = self._remaining == 0
            return data
        return self._take_chunks(buffer)

    def eof(self) -> None:
        if self._framing is Framing.CLOSE:
            self.done = True
        elif not self.done:
            raise HttpError("the peer closed the connection in the middle of a body", 502)

    def _take_chunks(self, buffer: bytearray) -> bytes:
        # One pass with an offset, one deletion at the end: an answer of many small
        # events arrives as many chunks per read.
        parts: list[bytearray] = []
        pos, size = 0, len(buffer)
        state, remaining = self._state, self._remaining
        while pos < size and not self.done:
            if state == "data":
                end = min(pos + remaining, size)
                parts.append(buffer[pos:end])
                remaining -= end - pos
                pos = end
                if remaining == 0:
                    state = "crlf"
            elif state == "crlf":
                if size - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise HttpError("malformed chunk: no CRLF after its data")
                pos += 2
                state = "size"
            else:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_CHUNK_LINE:
                        raise HttpError("malformed chunk: size line too long")
                    break
                line = bytes(buffer[pos:end])
                pos = end + 2
                if state == "trailer":
                    self._trailer += len(line) + 2
                    if self._trailer > _MAX_TRAILER_BYTES:
                        raise HttpError("chunked trailer too large")
                    self.done = not line
                    continue
                digits = line.split(b";", 1)[0].strip()
                if _HEX.fullmatch(digits) is None:
                    raise HttpError("malformed chunk size")
                remaining = int(digits, 16)
                state = "data" if remaining else "trailer"
        del buffer[:pos]
        self._state, self._remaining = state, remaining
        return b"".join(parts)
