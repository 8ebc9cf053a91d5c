"""The control protocol's parser and encoder, synchronously (no sockets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkeeperd.control.protocol import (
    MAX_LINE,
    MAX_STREAM_ID,
    OPS,
    Activity,
    Engine,
    FrameError,
    Models,
    Request,
    Select,
    Status,
    StreamEnd,
    StreamStart,
    Subscribe,
    Unload,
    as_message,
    encode,
    parse_request,
)
from lmkeeperd.errors import ProtocolError


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"op": "select", "model": "qwen/qwen3-4b-2507"}, Select("qwen/qwen3-4b-2507")),
        ({"op": "activity"}, Activity()),
        ({"op": "stream_start"}, StreamStart()),
        ({"op": "stream_end", "stream": 7}, StreamEnd(7)),
        ({"op": "stream_end"}, StreamEnd(None)),
        ({"op": "stream_end", "stream": None}, StreamEnd(None)),
        ({"op": "engine", "name": "ollama"}, Engine("ollama")),
        ({"op": "unload"}, Unload(None)),
        ({"op": "unload", "model": "m"}, Unload("m")),
        ({"op": "unload", "model": None}, Unload(None)),
        ({"op": "status"}, Status()),
        ({"op": "subscribe"}, Subscribe()),
        ({"op": "models"}, Models()),
        ({"op": "select", "model": "m", "keep_alive": 90}, Select("m", 90.0)),
        ({"op": "select", "model": "m", "keep_alive": None}, Select("m")),
        ({"op": "select", "model": "m", "keep_alive": "default"}, Select("m", None, True)),
    ],
)
def test_each_op_parses_to_its_record(message: dict[str, object], expected: Request) -> None:
    assert parse_request(line(message)) == expected


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert parse_request(line({"op": "select", "model": "m", "client": "zed", "v": [1]})) == (
        Select("m")
    )


def test_line_endings_are_optional_and_crlf_is_accepted() -> None:
    assert parse_request(b'{"op":"status"}') == Status()
    assert parse_request(b'{"op":"status"}\r\n') == Status()


def test_a_line_of_exactly_max_line_bytes_is_accepted_one_more_is_fatal() -> None:
    body = b'{"op":"status"}'
    at_limit = body + b" " * (MAX_LINE - len(body))
    assert parse_request(at_limit + b"\n") == Status()
    with pytest.raises(FrameError, match=r"line too long \(limit 65536 bytes\)"):
        parse_request(at_limit + b" \n")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{op: status}", "invalid JSON: "),
        (b"", "invalid JSON: "),
        (b"[1, 2]", "expected a JSON object, got array"),
        (b'"status"', "expected a JSON object, got string"),
        (b"42", "expected a JSON object, got number"),
        (b"null", "expected a JSON object, got null"),
        (b"true", "expected a JSON object, got boolean"),
        (b"1" * 5000, "invalid JSON: "),  # beyond Python's int digit limit
    ],
)
def test_frames_that_are_not_json_objects_are_fatal(raw: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        parse_request(raw)


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_a_frame_error_not_a_recursion_error(opener: bytes) -> None:
    raw = opener * (MAX_LINE // len(opener))
    with pytest.raises(FrameError, match="invalid JSON"):
        parse_request(raw)


def test_deep_nesting_inside_an_ignored_field_is_a_frame_error_too() -> None:
    depth = 30_000
    raw = b'{"op":"status","x":' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) <= MAX_LINE
    with pytest.raises(FrameError, match="nested too deeply"):
        parse_request(raw)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, 'missing field "op"; expected one of activity, engine, models, select'),
        ({"op": 3}, '"op" must be a string, got number'),
        (
            {"op": "foo"},
            'unknown op "foo"; expected one of activity, engine, models, select, status, '
            "stream_end, stream_start, subscribe, unload",
        ),
        ({"op": "select"}, 'select: missing field "model"'),
        ({"op": "select", "model": 3}, 'select: "model" must be a string, got number'),
        ({"op": "select", "model": None}, 'select: "model" must be a string, got null'),
        (
            {"op": "select", "model": "m", "keep_alive": "1h"},
            'select: "keep_alive" must be a number of seconds or "default", got string',
        ),
        (
            {"op": "select", "model": "m", "keep_alive": -1},
            'select: "keep_alive" must be between 0 and 2592000 seconds, got -1',
        ),
        ({"op": "engine"}, 'engine: missing field "name"'),
        ({"op": "engine", "name": ["x"]}, 'engine: "name" must be a string, got array'),
        ({"op": "unload", "model": {}}, 'unload: "model" must be a string, got object'),
        ({"op": "stream_end", "stream": "1"}, '"stream" must be a non-negative integer, got'),
        ({"op": "stream_end", "stream": True}, "got boolean"),
        ({"op": "stream_end", "stream": 1.0}, "got number"),
        ({"op": "stream_end", "stream": -1}, '"stream" must be a non-negative integer up to'),
        ({"op": "stream_end", "stream": MAX_STREAM_ID + 1}, "non-negative integer up to"),
        ({"op": "stream_end", "stream": 10**300}, "non-negative integer up to"),
    ],
)
def test_bad_requests_are_request_errors_that_name_the_problem(
    message: dict[str, object], error: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(line(message))
    assert not isinstance(caught.value, FrameError)
    assert error in str(caught.value)


def test_an_unknown_op_is_echoed_escaped_and_cut_short() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(line({"op": "x\n" * 1000}))
    message = str(caught.value)
    assert "\n" not in message
    assert len(message) < 250


def test_the_largest_stream_id_is_accepted() -> None:
    assert parse_request(line({"op": "stream_end", "stream": MAX_STREAM_ID})) == StreamEnd(
        MAX_STREAM_ID
    )


def test_ops_lists_every_op_once() -> None:
    assert OPS == (
        "activity",
        "engine",
        "models",
        "select",
        "status",
        "stream_end",
        "stream_start",
        "subscribe",
        "unload",
    )


def test_encode_gives_one_compact_line() -> None:
    assert encode({"ok": True, "stream": 3}) == b'{"ok":true,"stream":3}\n'
    assert encode({"error": "a\nb"}).count(b"\n") == 1
    assert encode({"model": "modèle"}) == b'{"model":"mod\\u00e8le"}\n'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_encode_refuses_what_is_not_plain_json(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode({"x": bad})


requests = st.one_of(
    st.builds(Select, st.text(), st.none() | st.floats(0, 30 * 24 * 3600.0)),
    st.just(Activity()),
    st.just(StreamStart()),
    st.builds(StreamEnd, st.none() | st.integers(0, MAX_STREAM_ID)),
    st.builds(Engine, st.text()),
    st.builds(Unload, st.none() | st.text()),
    st.just(Status()),
    st.just(Subscribe()),
    st.just(Models()),
)


@given(requests)
def test_as_message_then_parse_round_trips(request: Request) -> None:
    assert parse_request(encode(as_message(request))) == request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
near_requests = st.fixed_dictionaries(
    {"op": st.sampled_from([*OPS, "nope"]) | json_values},
    optional={"model": json_values, "name": json_values, "stream": json_values},
)


@settings(max_examples=200)
@given(st.binary(max_size=512) | near_requests.map(lambda m: json.dumps(m).encode()))
def test_parse_request_returns_a_request_or_raises_protocol_error(raw: bytes) -> None:
    try:
        result = parse_request(raw)
    except ProtocolError:
        return
    assert isinstance(
        result,
        Select | Activity | StreamStart | StreamEnd | Engine | Unload | Status | Models | Subscribe,
    )
