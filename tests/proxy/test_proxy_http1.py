"""The proxy's HTTP/1.1 codec (lmkeeperd/proxy/http1.py): heads, framing, bodies. No I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmkeeperd.proxy.http1 import (
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    BodyDecoder,
    Framing,
    HttpError,
    chunk,
    end_to_end,
    parse_request,
    parse_response,
    request_head,
    response_head,
    split_head,
)


def test_split_head_takes_one_head_and_leaves_the_rest() -> None:
    buffer = bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODYGET")
    assert split_head(buffer) == b"GET / HTTP/1.1\r\nHost: a"
    assert buffer == b"BODYGET"
    assert split_head(buffer) is None and buffer == b"BODYGET"


def test_split_head_refuses_a_head_that_never_ends() -> None:
    with pytest.raises(HttpError) as caught:
        split_head(bytearray(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES))
    assert caught.value.status == 431


def test_request_keeps_header_case_and_order() -> None:
    request = parse_request(
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: h\r\nX-Custom-Thing:  v a l \r\n"
        b"Authorization: Bearer abc\r\nContent-Length: 12"
    )
    assert request.method == b"POST" and request.target == b"/v1/chat/completions?x=1"
    assert request.headers == [
        (b"Host", b"h"),
        (b"X-Custom-Thing", b"v a l"),
        (b"Authorization", b"Bearer abc"),
        (b"Content-Length", b"12"),
    ]
    assert (request.framing, request.length) == (Framing.LENGTH, 12)
    assert request.keep_alive and not request.expects_continue
    assert request.header(b"authorization") == b"Bearer abc"


def test_request_framing_and_connection_rules() -> None:
    chunked = parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked")
    assert chunked.framing is Framing.CHUNKED
    assert parse_request(b"GET / HTTP/1.1").framing is Framing.NONE
    assert not parse_request(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close").keep_alive
    assert not parse_request(b"GET / HTTP/1.0").keep_alive
    expect = parse_request(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3")
    assert expect.expects_continue
    same = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5")
    assert same.length == 5


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x10", 400),
        (b"GET / HTTP/1.1\r\nHost : a", 400),  # whitespace before the colon
        (b"GET / HTTP/1.1\r\nX: a\r\n  folded", 400),  # obsolete line folding
        (b"GET / HTTP/1.1\r\nX: a\x00b", 400),
        (b"GET / HTTP/1.1\r\nX: a\rb", 400),
        (b"GET /a b HTTP/1.1", 400),
        (b"GET / HTTP/2.0", 505),
        (b"garbage", 400),
    ],
)
def test_request_refusals(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request(head)
    assert caught.value.status == status


def test_error_messages_never_quote_the_request() -> None:
    secret = b"Authorization: Bearer sk-not-to-be-echoed\x01"
    with pytest.raises(HttpError) as caught:
        parse_request(b"GET / HTTP/1.1\r\n" + secret)
    assert "sk-not" not in str(caught.value)


def test_response_framing() -> None:
    ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7", b"POST")
    assert (ok.status, ok.reason, ok.framing, ok.length, ok.keep_alive) == (
        200,
        b"OK",
        Framing.LENGTH,
        7,
        True,
    )
    sse = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"POST")
    assert sse.framing is Framing.CHUNKED and sse.keep_alive
    until_close = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain", b"GET")
    assert until_close.framing is Framing.CLOSE and not until_close.keep_alive
    head = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7", b"HEAD")
    assert head.framing is Framing.NONE
    assert parse_response(b"HTTP/1.1 204 No Content", b"DELETE").framing is Framing.NONE
    assert parse_response(b"HTTP/1.1 200", b"GET").reason == b""
    assert not parse_response(b"HTTP/1.1 200 OK\r\nConnection: close", b"GET").keep_alive


def test_a_malformed_response_is_a_bad_gateway() -> None:
    for head in (b"HTTP/1.1 2000 OK", b"ICY 200 OK", b"HTTP/1.1 200 OK\r\nContent-Length: x"):
        with pytest.raises(HttpError) as caught:
            parse_response(head, b"GET")
        assert caught.value.status == 502


def test_end_to_end_drops_hop_by_hop_headers_and_those_connection_names() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Authorization", b"Bearer t"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"3"),
    ]
    assert end_to_end(headers) == [
        (b"Authorization", b"Bearer t"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"3"),
    ]


def test_heads_are_written_as_parsed() -> None:
    headers = [(b"Host", b"x"), (b"X-A", b"1")]
    written = request_head(b"POST", b"/p?q", headers)
    assert written == b"POST /p?q HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
    assert parse_request(written[:-4]).headers == headers
    assert response_head(404, b"Not Found", []) == b"HTTP/1.1 404 Not Found\r\n\r\n"


def test_length_body_leaves_what_follows() -> None:
    body = BodyDecoder(Framing.LENGTH, 5)
    buffer = bytearray(b"hel")
    assert body.take(buffer) == b"hel" and not body.done
    buffer += b"loGET /"
    assert body.take(buffer) == b"lo" and body.done
    assert buffer == b"GET /"


def test_empty_bodies_are_done_at_once() -> None:
    assert BodyDecoder(Framing.NONE).done
    assert BodyDecoder(Framing.LENGTH, 0).done


def test_a_close_delimited_body_ends_at_eof_others_fail() -> None:
    body = BodyDecoder(Framing.CLOSE)
    assert body.take(bytearray(b"abc")) == b"abc"
    body.eof()
    assert body.done
    cut = BodyDecoder(Framing.LENGTH, 10)
    cut.take(bytearray(b"abc"))
    with pytest.raises(HttpError):
        cut.eof()


def test_chunked_body_with_extensions_and_trailers() -> None:
    body = BodyDecoder(Framing.CHUNKED)
    buffer = bytearray(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT")
    assert body.take(buffer) == b"abcde"
    assert body.done and buffer == b"NEXT"


@pytest.mark.parametrize(
    "raw", [b"zz\r\nab\r\n", b"2\r\nabXX", b"-1\r\n", b"1" * 5000, b"10000000000000000\r\n"]
)
def test_malformed_chunks_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpError):
        BodyDecoder(Framing.CHUNKED).take(bytearray(raw))


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=50), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_chunked_roundtrip_whatever_the_reads(pieces: list[bytes], cuts: list[int]) -> None:
    """Whatever way the bytes are split into reads, the decoder returns the body exactly."""
    wire = b"".join(chunk(p) for p in pieces) + LAST_CHUNK + b"AFTER"
    bounds = sorted({c for c in cuts if c < len(wire)} | {len(wire)})
    body = BodyDecoder(Framing.CHUNKED)
    buffer = bytearray()
    got = b""
    start = 0
    for end in bounds:
        buffer += wire[start:end]
        start = end
        got += body.take(buffer)
    assert body.done
    assert got == b"".join(pieces)
    assert buffer == b"AFTER"


def test_absolute_form_targets_become_paths() -> None:
    assert parse_request(b"GET http://lm:1234/v1/models?x=1 HTTP/1.1").target == b"/v1/models?x=1"
    assert parse_request(b"GET HTTP://lm:1234 HTTP/1.1").target == b"/"
    assert parse_request(b"OPTIONS * HTTP/1.1").target == b"*"
