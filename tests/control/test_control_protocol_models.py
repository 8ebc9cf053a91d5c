"""L24: `stream_start` and `activity` may name their model (control/protocol.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmkeeperd.control.protocol import (
    Activity,
    FrameError,
    Request,
    StreamStart,
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
        ({"op": "activity"}, Activity()),
        ({"op": "activity", "model": None}, Activity()),
        ({"op": "activity", "model": " qwen/qwen3-4b "}, Activity(model="qwen/qwen3-4b")),
        ({"op": "stream_start"}, StreamStart()),
        ({"op": "stream_start", "model": "e/mbed"}, StreamStart(model="e/mbed")),
    ],
)
def test_L24_a_use_names_its_model_or_means_the_current_one(
    message: dict[str, object], expected: Request
) -> None:
    assert parse_request(line(message)) == expected


@pytest.mark.parametrize("op", ["activity", "stream_start"])
@pytest.mark.parametrize(
    ("model", "error"),
    [
        (5, '"model" must be a model key (a string), got number; leave it out'),
        (["a"], "got array"),
        ("", '"model" is empty; leave it out for the current model'),
        ("   ", '"model" is empty'),
    ],
)
def test_L24_a_bad_model_on_a_use_is_a_request_error_naming_it(
    op: str, model: object, error: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(line({"op": op, "model": model}))
    assert not isinstance(caught.value, FrameError)
    assert str(caught.value).startswith(f"{op}: ")
    assert error in str(caught.value)


keys = st.text(min_size=1).map(str.strip).filter(bool)


@given(st.one_of(st.builds(Activity, st.none() | keys), st.builds(StreamStart, st.none() | keys)))
def test_uses_with_a_model_round_trip(request: Request) -> None:
    message = as_message(request)
    assert ("model" in message) is (getattr(request, "model", None) is not None)
    assert parse_request(encode(message)) == request
