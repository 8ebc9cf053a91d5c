"""Fuzzing the live daemon's control socket: whatever a client sends, a clear answer.

These tests talk to a real `lmkeeperd run` process over its real socket (the parser alone is
fuzzed in test_control_protocol.py, the server with a fake handler in test_control_server.py).
Each example opens a connection and sends a few frames: request objects with random and
wrongly typed fields, random bytes, numbers with thousands of digits, JSON nested thousands
deep, lines around and beyond the 64 KiB limit, partial lines. Then it half-closes the
connection and reads everything the daemon sends back, with a deadline (a hang fails).

What must come back is predicted from the stream of bytes alone, by the rules of
interface.md and the standard library's JSON: every complete line gets exactly one reply; a
line longer than 64 KiB, not UTF-8, not JSON or not a JSON object gets an error reply and the
connection is closed after it; a line that is a JSON object gets a reply and the connection
goes on (a `subscribe` turns it into an event stream). Every reply is a JSON object whose
`ok` is a boolean, with a non-empty `error` string when it is false.

After every example the daemon must still answer `status`; at the end it must have ended
every stream the fuzzing connections opened (L8), and its log must hold no error (an
exception escaping a handler is logged as an error).

Budgets: the "ci" hypothesis profile runs a few dozen examples; HYPOTHESIS_PROFILE=bench
(bench/run_all.py) runs 10,000 of each.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from daemon_harness import DaemonProc
from fuzzing import budget, report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.control.protocol import MAX_LINE

pytestmark = pytest.mark.e2e

READ_DEADLINE_S = 15.0
MODELS = ["qwen/qwen3-4b-2507", "meta-llama/llama-3.1-8b-instruct", "nobody/nothing"]
OPS = ["select", "activity", "stream_start", "stream_end", "engine", "unload", "status"]


FUZZ = settings(
    max_examples=budget(40),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- frames ----------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
requests = st.fixed_dictionaries(
    # "subscribe" is rare: it turns the connection into an event stream.
    {"op": st.sampled_from(OPS) | st.just("subscribe") | st.text(max_size=10) | json_values},
    optional={
        "model": st.sampled_from(MODELS) | json_values,
        "stream": st.integers(-(2**70), 2**70) | json_values,
        "name": st.sampled_from(["lmstudio", "lmstudio", "ollama"]) | json_values,
        "extra": json_values,
    },
)


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _padded_status(length: int) -> bytes:
    """A valid status request whose line (without the newline) is `length` bytes."""
    head, tail = b'{"op":"status","pad":"', b'"}'
    return head + b"x" * (length - len(head) - len(tail)) + tail + b"\n"


# JSON nesting: well below Python's recursion limit (parses) or far above it (refused). Near
# the limit the outcome depends on how deep the parser's caller already is, and hypothesis
# raises the limit of this process while it runs a test.
depths = st.integers(1, 700) | st.integers(5000, 10_000)

lines = st.one_of(
    requests.map(_line),
    st.binary(max_size=200),
    st.integers(1, 6000).map(lambda n: b'{"op":"stream_end","stream":' + b"9" * n + b"}\n"),
    st.sampled_from([b"1e999", b"-1e999", b"NaN", b"-Infinity", b"1.5", b"true", b"-0"]).map(
        lambda n: b'{"op":"stream_end","stream":' + n + b"}\n"
    ),
    depths.map(lambda d: b"[" * d + b"]" * d + b"\n"),
    depths.map(lambda d: b'{"op":"status","x":' + b'{"a":' * d + b"1" + b"}" * d + b"}\n"),
    st.sampled_from(
        [b"[1,2]\n", b'"text"\n', b"3\n", b"null\n", b"\n", b"\r\n", b"{}\n", b"\xef\xbb\xbf{}\n"]
    ),
    st.integers(MAX_LINE - 2, MAX_LINE + 2).map(_padded_status),
    st.integers(MAX_LINE + 1, 3 * MAX_LINE).map(lambda n: b"y" * n),
    st.integers(1, 100).map(lambda n: b'{"op":"status"' + b" " * n),  # a partial line
)
frames = st.lists(lines, min_size=1, max_size=6)


@dataclass(frozen=True, slots=True)
class Expected:
    replies: int
    closed_on_error: bool = False  # the last reply is a frame error and the daemon hangs up
    subscribed: bool = False


def predict(data: bytes) -> Expected:
    """What the daemon must answer to `data` followed by end-of-file (see the docstring)."""
    replies = 0
    rest = data
    while True:
        newline = rest.find(b"\n")
        if newline == -1:
            # The end: a partial line gets no answer, unless it is already too long.
            return (
                Expected(replies + 1, closed_on_error=True)
                if len(rest) > MAX_LINE
                else (Expected(replies))
            )
        if newline > MAX_LINE:
            return Expected(replies + 1, closed_on_error=True)
        line, rest = rest[:newline], rest[newline + 1 :]
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return Expected(replies + 1, closed_on_error=True)
        if not isinstance(obj, dict):
            return Expected(replies + 1, closed_on_error=True)
        replies += 1
        if obj.get("op") == "subscribe":
            return Expected(replies, subscribed=True)


def converse(path: str, data: bytes) -> list[bytes]:
    """Send `data`, half-close, and return every line received until the daemon closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_DEADLINE_S)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the daemon may hang up midway, after a frame error
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + READ_DEADLINE_S
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(
                    f"no end of the conversation within {READ_DEADLINE_S}s"
                ) from None
            if not chunk:
                break
            received += chunk
            if time.monotonic() > deadline:
                raise AssertionError("the daemon kept talking past the deadline")
    assert received == b"" or received.endswith(b"\n"), f"a reply was cut off: {received[-80:]!r}"
    return received.split(b"\n")[:-1]


def check_reply(raw: bytes) -> dict[str, Any]:
    reply = json.loads(raw)
    assert isinstance(reply, dict), raw
    assert isinstance(reply.get("ok"), bool), raw
    if reply["ok"] is False:
        assert isinstance(reply.get("error"), str) and reply["error"].strip(), raw
    return reply


def still_serving(daemon: DaemonProc) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()[-3000:]
    assert daemon.request({"op": "status"}, timeout=READ_DEADLINE_S)["ok"] is True


def clean_end(daemon: DaemonProc) -> None:
    """Every fuzzing connection is gone: no stream left (L8), nothing logged as an error."""
    daemon.wait_status(active_streams=0, timeout=20)
    errors = [e for e in daemon.log_events() if e.get("level") in ("error", "critical")]
    assert errors == [], errors[:5]


def test_predict_follows_the_interface_rules() -> None:
    assert predict(b'{"op":"status"}\n{"op":"bogus"}\n') == Expected(2)
    assert predict(b'{"op":"status"}\n[1]\n{"op":"status"}\n') == Expected(2, True)
    assert predict(b'{"op":"status"}') == Expected(0)  # a partial line at the end
    assert predict(b"z" * (MAX_LINE + 1)) == Expected(1, True)
    assert predict(_padded_status(MAX_LINE)) == Expected(1)
    assert predict(_padded_status(MAX_LINE + 1)) == Expected(1, True)
    assert predict(b'{"op":"subscribe"}\n{"op":"status"}\n') == Expected(1, subscribed=True)
    assert predict(b"[" * 5000 + b"]" * 5000 + b"\n") == Expected(1, True)


def test_random_frames_always_get_a_clear_answer(daemon: DaemonProc) -> None:
    path = str(daemon.socket)
    examples = 0

    @FUZZ
    @given(frames)
    def conversation(pieces: list[bytes]) -> None:
        nonlocal examples
        examples += 1
        data = b"".join(pieces)
        expected = predict(data)
        received = converse(path, data)
        replies = received[: expected.replies]
        assert len(replies) == expected.replies, (expected, received[:5])
        checked = [check_reply(r) for r in replies]
        if expected.closed_on_error:
            assert checked[-1]["ok"] is False
        if expected.subscribed:
            for raw in received[expected.replies :]:
                assert "event" in json.loads(raw), raw
        else:
            assert len(received) == expected.replies, received[expected.replies :][:3]
        still_serving(daemon)

    conversation()
    clean_end(daemon)
    report("socket: random frames to the live daemon", examples)


def _rst(sock: socket.socket) -> None:
    """Close with a reset, as a crashed client's kernel would (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(READ_DEADLINE_S)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _stream_then(path: str, close: Callable[[socket.socket], None]) -> None:
    sock = _connect(path)
    sock.sendall(b'{"op":"stream_start"}\n{"op":"stream_start"}\n')
    close(sock)  # maybe before the replies were even written


def _many(path: str, n: int, close: Callable[[socket.socket], None]) -> None:
    opened: list[socket.socket] = []
    try:
        for _ in range(n):
            opened.append(_connect(path))
    finally:
        for sock in opened:
            close(sock)


def _subscribe_then_rst(path: str) -> None:
    sock = _connect(path)
    sock.sendall(b'{"op":"subscribe"}\n')
    _rst(sock)


ACTIONS: dict[str, Callable[[str], None]] = {
    "open and close": lambda p: _connect(p).close(),
    "open and reset": lambda p: _rst(_connect(p)),
    "half a line, then reset": lambda p: _rst(_send(_connect(p), b'{"op":"sel')),
    "streams, then close": lambda p: _stream_then(p, socket.socket.close),
    "streams, then reset": lambda p: _stream_then(p, _rst),
    "50 at once, then close": lambda p: _many(p, 50, socket.socket.close),
    "50 at once, then reset": lambda p: _many(p, 50, _rst),
    "subscribe, then reset": _subscribe_then_rst,
}


def _send(sock: socket.socket, data: bytes) -> socket.socket:
    sock.sendall(data)
    return sock


def test_rapid_connects_and_disconnects_leave_nothing_behind(daemon: DaemonProc) -> None:
    path = str(daemon.socket)
    examples = 0

    @FUZZ
    @given(st.lists(st.sampled_from(sorted(ACTIONS)), min_size=1, max_size=12))
    def churn(actions: list[str]) -> None:
        nonlocal examples
        examples += 1
        for action in actions:
            ACTIONS[action](path)
        still_serving(daemon)

    churn()
    clean_end(daemon)
    assert daemon.status()["subscribers"] == 0
    report("socket: rapid connects and disconnects", examples)
