"""Fuzzing the LM Studio client with what a broken or hostile server could answer.

test_client_contract.py pins the client's answers to specific malformed bodies. Here
hypothesis generates them: any status with random bytes, random JSON, valid answers with
one field swapped for a value of the wrong type, valid answers cut short, bodies of many
megabytes; and, over real TCP from a scripted server, connections closed at every point of
an answer, broken chunked encoding, silence, and answers that trickle in a byte at a time,
some of them forever.

Every call must end within a bound in a result of the right type or a `ServerError` (the
daemon maps exactly those to load/unload failures and outages), with a message of bounded
length that never contains the API token, even when the server echoes it back.

Budgets: "ci" runs a few hundred MockTransport examples and a couple of dozen over TCP;
HYPOTHESIS_PROFILE=bench runs 10,000 MockTransport examples and a few hundred over TCP (those
wait on timeouts).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fuzzing import BENCH, budget, report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.errors import ServerError
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.lmstudio.models import LoadResult, ModelInfo

TOKEN = "sk-lm-Zq8VxT3pW9rK2mN7:Yb4Hc6Jd1Lf5Gs0A"
TOKEN_ENV = "LMKEEPERD_FUZZ_TOKEN"
QWEN = "qwen/qwen3-4b-2507"
MAX_MESSAGE = 1500  # an error message quotes at most a short snippet of what the server said

VALID: dict[str, Any] = {
    "list": {
        "models": [
            {
                "type": "llm",
                "publisher": "qwen",
                "key": QWEN,
                "display_name": "Qwen3 4B",
                "architecture": "qwen3",
                "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
                "size_bytes": 2497280256,
                "params_string": "4B",
                "loaded_instances": [{"id": QWEN, "config": {"context_length": 4096}}],
                "max_context_length": 262144,
                "format": "gguf",
            },
            {"type": "embedding", "key": "nomic-embed", "loaded_instances": []},
        ]
    },
    "load": {"type": "llm", "instance_id": QWEN, "load_time_seconds": 1.5, "status": "loaded"},
    "unload": {"instance_id": QWEN},
}

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.just(TOKEN)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, (*prefix, index))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


@st.composite
def mutated(draw: st.DrawFn, op: str) -> bytes:
    """A valid answer with one value, anywhere in it, replaced by random JSON."""
    valid = VALID[op]
    path = draw(st.sampled_from(list(_paths(valid))))
    return json.dumps(_replace(valid, path, draw(json_values))).encode()


@st.composite
def answers(draw: st.DrawFn, op: str) -> tuple[int, bytes, bool]:
    """(status, body, is it the valid answer with status 200)."""
    kind = draw(st.sampled_from(["valid", "mutated", "truncated", "json", "bytes", "echo"]))
    status = (
        200
        if kind == "valid"
        else draw(st.sampled_from([200, 200, 201, 204]) | st.integers(200, 599))
    )
    valid = json.dumps(VALID[op]).encode()
    if kind == "valid":
        return 200, valid, True
    if kind == "mutated":
        return status, draw(mutated(op)), False
    if kind == "truncated":
        return status, valid[: draw(st.integers(0, len(valid) - 1))], False
    if kind == "json":
        return status, json.dumps(draw(json_values)).encode(), False
    if kind == "echo":  # the server quotes the token back, in an error or anywhere
        text = draw(st.sampled_from([f'{{"error": "bad token {TOKEN}"}}', f"<p>{TOKEN}</p>"]))
        return status, text.encode(), False
    return status, draw(st.binary(max_size=300)), False


async def call(client: LMStudioClient, op: str) -> object:
    if op == "list":
        return await client.list_models()
    if op == "load":
        return await client.load(QWEN, {"context_length": 4096})
    await client.unload(QWEN)
    return None


def check_outcome(op: str, outcome: object, must_succeed: bool) -> None:
    if isinstance(outcome, ServerError):
        assert not must_succeed, outcome
        message = str(outcome)
        assert message.strip() and len(message) <= MAX_MESSAGE, message[:300]
        assert TOKEN not in message and TOKEN not in repr(outcome)
        return
    if op == "list":
        assert isinstance(outcome, list) and all(isinstance(m, ModelInfo) for m in outcome)
        if must_succeed:
            assert [m.key for m in outcome] == [QWEN, "nomic-embed"]
    elif op == "load":
        assert isinstance(outcome, LoadResult) and outcome.instance_id
        if must_succeed:
            assert outcome.instance_id == QWEN
    else:
        assert outcome is None


async def outcome_of(client: LMStudioClient, op: str, bound: float) -> object:
    try:
        return await asyncio.wait_for(call(client, op), bound)
    except ServerError as error:
        return error
    except TimeoutError:
        raise AssertionError(f"{op} was still waiting after {bound}s: a hang") from None


MOCK = settings(
    max_examples=budget(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_any_answer_gives_a_result_or_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    examples = 0

    @MOCK
    @given(
        st.sampled_from(["list", "load", "unload"]).flatmap(
            lambda op: st.tuples(st.just(op), answers(op))
        )
    )
    def answer(case: tuple[str, tuple[int, bytes, bool]]) -> None:
        nonlocal examples
        examples += 1
        op, (status, body, valid) = case

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(status, content=body)

        async def scenario() -> None:
            client = LMStudioClient.from_settings(
                base_url="http://lmstudio.test:1234",
                token_env=TOKEN_ENV,
                request_timeout=5,
                load_timeout=5,
                transport=httpx.MockTransport(handler),
            )
            async with client:
                check_outcome(op, await outcome_of(client, op, 10), must_succeed=valid)

        asyncio.run(scenario())

    answer()
    report("client: random, mutated, truncated answers (MockTransport)", examples)


def test_huge_answers_are_parsed_or_refused_with_a_short_message() -> None:
    examples = 0

    @settings(
        max_examples=40 if BENCH else 4,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.sampled_from(["models", "garbage", "string"]), st.integers(1, 20 if BENCH else 5))
    def huge(kind: str, megabytes: int) -> None:
        nonlocal examples
        examples += 1
        size = megabytes * 1_000_000
        if kind == "models":
            entry = json.dumps({"key": "m", "loaded_instances": []})
            count = size // (len(entry) + 1)
            body = ('{"models": [' + ",".join([entry] * count) + "]}").encode()
        elif kind == "garbage":
            body = b"\x00<html>" * (size // 7)
        else:
            body = json.dumps({"models": "x" * size}).encode()

        async def scenario() -> None:
            client = LMStudioClient.from_settings(
                base_url="http://lmstudio.test:1234",
                token_env=TOKEN_ENV,
                request_timeout=30,
                load_timeout=30,
                transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body)),
            )
            async with client:
                outcome = await outcome_of(client, "list", 60)
            if kind == "models":
                assert isinstance(outcome, list) and len(outcome) == count
            else:
                assert isinstance(outcome, ServerError), type(outcome)
                assert len(str(outcome)) <= MAX_MESSAGE

        asyncio.run(scenario())

    huge()
    report("client: huge answers (megabytes)", examples)


# --- over real TCP, from a scripted server -------------------------------------------------------

Script = Callable[[socket.socket, threading.Event], None]


def _headers(status: str = "200 OK", length: int | None = None, extra: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _trickle(data: bytes, every: float) -> Script:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        for i in range(len(data)):
            if stop.wait(every):
                return
            conn.sendall(data[i : i + 1])

    return script


def _endless(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(_headers(length=10**9))
    while not stop.wait(0.02):
        conn.sendall(b" ")


def _silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


def _send(data: bytes) -> Script:
    return lambda conn, stop: conn.sendall(data)


body_ok = json.dumps(VALID["list"]).encode()
scripts = st.one_of(
    st.just(("close at once", _send(b""))),
    st.binary(max_size=60).map(lambda b: ("garbage, then close", _send(b))),
    st.integers(0, 30).map(
        lambda n: ("status line cut", _send(b"HTTP/1.1 200 OK\r\nContent-"[:n]))
    ),
    st.integers(0, len(body_ok) - 1).map(
        lambda n: ("body cut short", _send(_headers(length=len(body_ok)) + body_ok[:n]))
    ),
    st.sampled_from([b"zz\r\n", b"5\r\nab", b"-1\r\n", b"ffffffffffffffffff\r\n"]).map(
        lambda chunk: (
            "broken chunked encoding",
            _send(_headers(extra="Transfer-Encoding: chunked\r\n") + chunk),
        )
    ),
    st.sampled_from([0.0, 0.01, 0.03]).map(
        lambda every: ("slow but whole", _trickle(_headers(length=len(body_ok)) + body_ok, every))
    ),
    st.just(("endless trickle", _endless)),
    st.just(("silence", _silent)),
    st.just(("whole answer", _send(_headers(length=len(body_ok)) + body_ok))),
)


class ScriptedServer:
    """A TCP server whose every connection runs the current script after reading a request."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # closing a socket does not wake a thread in accept()
        self.port = self.listener.getsockname()[1]
        self.script: Script = _send(b"")
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn, self.script), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, script: Script) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                script(conn, self.stop)
            except OSError:
                pass  # the client gave up: that is its right

    def close(self) -> None:
        self.stop.set()
        self.accepting.join(5)
        self.listener.close()
        for thread in self.threads:
            thread.join(5)


REQUEST_S = 0.2
LOAD_S = 0.4
TCP = settings(
    max_examples=500 if BENCH else 25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_broken_slow_and_endless_answers_end_in_time() -> None:
    server = ScriptedServer()
    examples = 0
    try:

        @TCP
        @given(st.sampled_from(["list", "load", "unload"]), scripts)
        def exchange(op: str, scripted: tuple[str, Script]) -> None:
            nonlocal examples
            examples += 1
            name, server.script = scripted

            async def scenario() -> None:
                client = LMStudioClient.from_settings(
                    base_url=f"http://127.0.0.1:{server.port}",
                    token_env=TOKEN_ENV,
                    request_timeout=REQUEST_S,
                    load_timeout=LOAD_S,
                )
                async with client:
                    started = time.monotonic()
                    # The client's own bound is request + read timeout; 404s probe /api/v0 too.
                    outcome = await outcome_of(client, op, 4 * (REQUEST_S + LOAD_S) + 2)
                    elapsed = time.monotonic() - started
                check_outcome(op, outcome, must_succeed=False)
                if name in ("endless trickle", "silence"):
                    assert isinstance(outcome, ServerError), name
                assert elapsed < 4 * (REQUEST_S + LOAD_S) + 1, (name, elapsed)

            asyncio.run(scenario())

        exchange()
    finally:
        server.close()
    report("client: broken, slow and endless answers over TCP", examples)


def test_a_token_echoed_in_a_failure_over_tcp_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = ScriptedServer()
    body = json.dumps({"error": f"token {TOKEN} is not valid"}).encode()
    server.script = _send(_headers("500 Internal Server Error", length=len(body)) + body)
    try:

        async def scenario() -> ServerError:
            client = LMStudioClient.from_settings(
                base_url=f"http://127.0.0.1:{server.port}",
                token_env=TOKEN_ENV,
                request_timeout=2,
                load_timeout=2,
            )
            async with client:
                outcome = await outcome_of(client, "load", 10)
            assert isinstance(outcome, ServerError)
            return outcome

        error = asyncio.run(scenario())
    finally:
        server.close()
    assert "is not valid" in str(error) and TOKEN not in str(error)
