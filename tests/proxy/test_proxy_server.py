"""The proxy's listener and forwarding, in-process, with a fake daemon behind `ProxyHooks`.

Upstreams are real servers on loopback: the emulator (in threads) and, where
the test must see exactly what arrived, a small echo server in the test's loop.
The end-to-end tests with the real daemon are in test_proxy_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
from structlog.testing import capture_logs

from lmkeeperd.config import is_loopback, parse_config, split_listen
from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import ConfigError, DaemonError
from lmkeeperd.proxy import (
    ProxyServer,
    ProxySettings,
    SelectionError,
    Token,
    is_inference,
    model_of,
)

T = TypeVar("T")
A = "qwen/qwen3-4b-2507"
CHAT = "/v1/chat/completions"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Hooks:
    """A fake daemon: records what the proxy tells it."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.open: set[int] = set()
        self.events: list[tuple[str, Any]] = []
        self.refuse: SelectionError | None = None
        self._changed = asyncio.Event()

    def _record(self, name: str, value: Any) -> None:
        self.events.append((name, value))
        self._changed.set()

    async def wait(self, predicate: Callable[[], Any], within: float = 10.0) -> None:
        """Until `predicate()` holds, re-checked after each thing the proxy tells us."""
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def activity(self) -> None:
        self._record("activity", None)

    def stream_opened(self) -> int:
        stream = next(self.ids)
        self.open.add(stream)
        self._record("opened", stream)
        return stream

    def stream_closed(self, stream: int) -> None:
        self.open.remove(stream)
        self._record("closed", stream)

    async def stream_for(self, model: str, *, max_wait: float) -> int:
        self._record("stream_for", model)
        if self.refuse is not None:
            raise self.refuse
        return self.stream_opened()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@contextlib.asynccontextmanager
async def proxy_for(
    upstream: str, hooks: Hooks | None = None, **options: Any
) -> AsyncIterator[tuple[ProxyServer, str]]:
    settings = ProxySettings(upstream=upstream, **options)
    server = ProxyServer(
        "127.0.0.1", 0, metrics=lambda: "# metrics\n", hooks=hooks or Hooks(), settings=settings
    )
    await server.start()
    try:
        yield server, f"http://{server.address}"
    finally:
        await server.close()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=10)


# --- an upstream that answers with what it received ------------------------------------


def _decode_chunked(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


class Echo:
    """Answers each request with JSON describing it: head lines, body length and digest.

    `GET /sse` answers with three server-sent events instead; `close_after` closes
    each connection after one answer without saying so (a keep-alive race).
    """

    def __init__(self, *, close_after: bool = False) -> None:
        self.close_after = close_after
        self.server: asyncio.Server | None = None
        self.connections = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Echo:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")[:-2]
                fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                if "content-length" in fields:
                    body = await reader.readexactly(int(fields["content-length"]))
                elif fields.get("transfer-encoding") == "chunked":
                    raw = b""
                    while not raw.endswith(b"0\r\n\r\n"):
                        raw += await reader.read(65536)
                    body = _decode_chunked(raw)
                else:
                    body = b""
                if lines[0].startswith("GET /sse"):
                    events = b"".join(b"data: %d\n\n" % i for i in range(3))
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(events), events)
                    )
                else:
                    answer = json.dumps(
                        {
                            "request_line": lines[0],
                            "headers": lines[1:],
                            "body_length": len(body),
                            "body_sha256": hashlib.sha256(body).hexdigest(),
                        }
                    ).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"X-Upstream: echo\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                    )
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()


def names_of(headers: list[str]) -> list[str]:
    return [h.partition(":")[0] for h in headers]


# --- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        (b"POST", b"/v1/chat/completions", True),
        (b"POST", b"/v1/completions/", True),
        (b"POST", b"/v1/embeddings", True),
        (b"POST", b"/v1/responses", True),
        (b"POST", b"/v1/messages", True),
        (b"POST", b"/api/v0/chat/completions", True),
        (b"POST", b"/api/v1/chat", True),
        (b"GET", b"/v1/chat/completions", False),
        (b"GET", b"/v1/models", False),
        (b"POST", b"/api/v1/models/load", False),
        (b"POST", b"/v1/messages/count_tokens", False),
        (b"POST", b"/v2/chat/completions", False),
    ],
)
def test_which_requests_are_inference(method: bytes, path: bytes, expected: bool) -> None:
    assert is_inference(method, path) is expected


def test_model_of_a_body() -> None:
    assert model_of(b'{"model": " qwen/x ", "messages": []}') == "qwen/x"
    for body in (b"", b"[]", b'{"model": 3}', b'{"model": "  "}', b"{not json", b"\xff"):
        assert model_of(body) is None


def test_listen_addresses_in_the_config() -> None:
    config = parse_config('[proxy]\nlisten = "127.0.0.1:1235"\nselect_on_request = true\n')
    assert config.proxy.listen == "127.0.0.1:1235" and config.proxy.select_on_request
    assert parse_config("").proxy.listen == "" and parse_config("").metrics.listen == ""
    assert split_listen("[::1]:0") == ("::1", 0)
    for bad in ("1235", "::1:1235", "host:65536", "a b:1", ":1"):
        with pytest.raises(ConfigError):
            parse_config(f'[proxy]\nlisten = "{bad}"\n')
    with pytest.raises(ConfigError) as caught:
        parse_config('[proxy]\nlisten = "127.0.0.1:9"\n[metrics]\nlisten = "127.0.0.1:9"\n')
    assert "metrics.listen" in str(caught.value)
    assert all(map(is_loopback, ("127.0.0.1", "127.9.9.9", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.2", "example.org")))


def test_the_token_never_shows_itself() -> None:
    token = Token("s3cret-token-value")
    settings = ProxySettings(upstream="http://x", inject_token=True, token=token)
    assert "s3cret" not in repr(token) and "s3cret" not in repr(settings)


# --- forwarding -------------------------------------------------------------------------


def test_headers_path_and_query_pass_through_hop_by_hop_do_not() -> None:
    async def main() -> None:
        async with Echo() as echo, proxy_for(echo.url + "/prefix") as (_, url), client() as c:
            echo_host = echo.url.removeprefix("http://")
            r = await c.post(
                url + "/v1/chat/completions?trace=1",
                content=b'{"model": "m"}',
                headers={
                    "X-Custom-Header": "kept",
                    "Authorization": "Bearer client-token",
                    "Connection": "keep-alive, X-Private",
                    "X-Private": "dropped",
                    "Keep-Alive": "timeout=5",
                },
            )
        assert r.status_code == 200 and r.headers["x-upstream"] == "echo"
        seen = r.json()
        assert seen["request_line"] == "POST /prefix/v1/chat/completions?trace=1 HTTP/1.1"
        headers = seen["headers"]
        assert "X-Custom-Header: kept" in headers
        assert "Authorization: Bearer client-token" in headers
        assert f"Host: {echo_host}" in headers
        assert not {"Connection", "X-Private", "Keep-Alive"} & set(names_of(headers))
        assert seen["body_length"] == len(b'{"model": "m"}')

    run(main())


def test_token_injected_only_when_the_client_sends_none() -> None:
    async def main() -> None:
        token = Token("tok-123")
        mine = {"Authorization": "Bearer mine"}
        async with Echo() as echo:
            async with (
                proxy_for(echo.url, inject_token=True, token=token) as (_, url),
                client() as c,
            ):
                plain = (await c.get(url + "/v1/models")).json()["headers"]
                own = await c.get(url + "/v1/models", headers=mine)
            async with (
                proxy_for(echo.url, inject_token=False, token=token) as (_, url),
                client() as c,
            ):
                off = (await c.get(url + "/v1/models")).json()["headers"]
        assert "Authorization: Bearer tok-123" in plain
        assert "Authorization: Bearer mine" in own.json()["headers"]
        assert "tok-123" not in own.text
        assert "Authorization" not in names_of(off)

    with capture_logs() as logs:
        run(main())
    assert "tok-123" not in repr(logs)


def test_a_large_chunked_upload_streams_through_intact() -> None:
    body = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB: above the read-whole limit

    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i : i + 100_000]

    async def main() -> dict[str, Any]:
        async with Echo() as echo, proxy_for(echo.url) as (_, url), client() as c:
            r = await c.post(url + "/upload", content=parts())
            return dict(r.json())

    seen = run(main())
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "Transfer-Encoding: chunked" in seen["headers"]


def test_a_pooled_connection_the_server_closed_is_replaced() -> None:
    async def main() -> int:
        async with Echo(close_after=True) as echo, proxy_for(echo.url) as (_, url):
            async with client() as c:
                for _ in range(5):
                    r = await c.post(url + CHAT, content=b'{"model": "m"}')
                    assert r.status_code == 200
            return echo.connections

    assert run(main()) == 5


def test_stream_accounting_for_inference_plain_and_event_stream_requests() -> None:
    async def main() -> Hooks:
        hooks = Hooks()
        async with Echo() as echo, proxy_for(echo.url, hooks) as (_, url), client() as c:
            await c.get(url + "/v1/models")
            assert hooks.names() == ["activity"]
            await c.post(url + CHAT, content=b"{}")
            # The stream stands for activity: its end restarts the idle timer (L9).
            assert hooks.names()[1:] == ["opened", "closed"]
            r = await c.get(url + "/sse")
            assert r.text.count("data:") == 3
        return hooks

    hooks = run(main())
    assert hooks.names()[3:] == ["activity", "opened", "closed"] and not hooks.open


def test_select_on_request_asks_for_the_named_model_and_relays_refusals() -> None:
    async def main() -> None:
        hooks = Hooks()
        async with (
            Echo() as echo,
            proxy_for(echo.url, hooks, select_on_request=True) as (_, url),
            client() as c,
        ):
            r = await c.post(url + CHAT, json={"model": " B ", "messages": []})
            assert r.status_code == 200
            assert hooks.events[0] == ("stream_for", "B")
            hooks.refuse = SelectionError("no can do", status=503)
            r = await c.post(url + CHAT, json={"model": "C", "messages": []})
            assert r.status_code == 503
            assert r.json()["error"]["message"] == "no can do"
            r = await c.post(url + CHAT, json={"messages": []})  # names no model
            assert r.status_code == 200
            assert hooks.names() == [
                *("stream_for", "opened", "closed"),  # B
                "stream_for",  # C, refused
                *("opened", "closed"),  # no model named: no selection
            ]
        assert not hooks.open

    run(main())


def test_sse_from_the_emulator_arrives_event_by_event(emulator: Emulator) -> None:
    """Each event is received while the emulator is still producing the next ones."""
    emulator.load_behind(A)
    emulator.set_stream(0.05, 6)

    async def main() -> None:
        async with proxy_for(emulator.url) as (_, url), client() as c:
            payload = {"model": A, "messages": [], "stream": True}
            async with c.stream("POST", url + CHAT, json=payload) as r:
                events = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        events += 1
                        record = emulator.requests()[-1]
                        if events < 6:
                            assert record.t_done is None, f"event {events} came after the end"
        assert events == 6

    run(main())


def test_a_client_that_leaves_mid_stream_cancels_the_upstream_request(emulator: Emulator) -> None:
    emulator.load_behind(A)
    emulator.set_stream(0.02, 5000)  # 100 s, if nobody cancelled it

    async def main() -> Hooks:
        hooks = Hooks()
        async with proxy_for(emulator.url, hooks) as (_, url):
            async with client() as c:
                payload = {"model": A, "messages": [], "stream": True}
                async with c.stream("POST", url + CHAT, json=payload) as r:
                    chunks = r.aiter_raw()  # held: a dropped iterator would close the response
                    await anext(chunks)
                    assert hooks.open
            # The client is gone: its stream ends, and the emulator sees its client leave.
            await hooks.wait(lambda: not hooks.open)
            cut = lambda: emulator.requests()[-1].t_done is not None  # noqa: E731
            await asyncio.to_thread(emulator.wait_until, cut, 10.0)
        return hooks

    run(main())


def test_upstream_down_gives_a_502_with_a_json_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused

        async def main() -> httpx.Response:
            hooks = Hooks()
            async with proxy_for(dead, hooks) as (server, url), client() as c:
                r = await c.post(url + CHAT, content=b"{}")
                assert server.stats.upstream_errors == 1 and not hooks.open
                assert "opened" not in hooks.names()
                return r

        r = run(main())
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_unreachable" and dead in error["message"]


def test_an_upstream_that_breaks_off_an_answer_cuts_the_client() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(broken, "127.0.0.1", 0)
        upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with proxy_for(upstream) as (proxy, url), client() as c:
                with pytest.raises(httpx.RemoteProtocolError):
                    await c.get(url + "/v1/models")
                assert proxy.stats.responses.get("aborted") == 1
        finally:
            server.close()
            await server.wait_closed()

    run(main())


# --- the listener itself ------------------------------------------------------------------


async def raw_exchange(url: str, data: bytes, until_bytes: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        while until_bytes not in got:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += chunk
        return got
    finally:
        writer.close()
        await writer.wait_closed()


def test_pipelined_requests_are_answered_in_order() -> None:
    async def main() -> bytes:
        async with Echo() as echo, proxy_for(echo.url) as (_, url):
            two = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"
            return await raw_exchange(url, two, b"GET /two")

    got = run(main())
    assert got.index(b"GET /one") < got.index(b"GET /two")


def test_expect_100_continue_is_honoured() -> None:
    async def main() -> bytes:
        async with Echo() as echo, proxy_for(echo.url) as (_, url):
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(
                    b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n"
                )
                await writer.drain()
                interim = await reader.readuntil(b"\r\n\r\n")
                assert interim.startswith(b"HTTP/1.1 100")
                writer.write(b"hello")
                return await reader.readuntil(b"}")
            finally:
                writer.close()
                await writer.wait_closed()

    got = run(main())
    assert b"200 OK" in got and b'"body_length": 5' in got and b"Expect" not in got


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_requests_get_a_json_400_and_the_connection_closes(
    request_bytes: bytes,
) -> None:
    async def main() -> tuple[bytes, int]:
        hooks = Hooks()
        async with Echo() as echo, proxy_for(echo.url, hooks) as (_, url):
            got = await raw_exchange(url, request_bytes, b"}")
            return got, echo.connections + len(hooks.open)

    got, upstream_work = run(main())
    assert got.startswith(b"HTTP/1.1 400") and b"Connection: close" in got
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"
    assert upstream_work == 0


def test_metrics_and_the_reserved_paths_are_answered_locally() -> None:
    async def main() -> None:
        async with Echo() as echo, proxy_for(echo.url) as (_, url), client() as c:
            metrics = await c.get(url + "/lmkeeperd/metrics")
            assert metrics.status_code == 200 and metrics.text == "# metrics\n"
            assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            other = await c.get(url + "/lmkeeperd/nothing")
            assert other.status_code == 404 and echo.connections == 0
            ws = await c.get(
                url + "/llm", headers={"Upgrade": "websocket", "Connection": "Upgrade"}
            )
            assert ws.status_code == 501 and "WebSocket" in ws.json()["error"]["message"]

    run(main())


def test_a_metrics_only_listener_forwards_nothing() -> None:
    async def main() -> None:
        server = ProxyServer("127.0.0.1", 0, metrics=lambda: "m 1\n")
        await server.start()
        try:
            async with client() as c:
                url = f"http://{server.address}"
                assert (await c.get(url + "/lmkeeperd/metrics")).text == "m 1\n"
                assert (await c.post(url + CHAT, content=b"{}")).status_code == 404
        finally:
            await server.close()

    run(main())


def test_listening_on_a_port_in_use_is_a_clear_error() -> None:
    async def main() -> None:
        first = ProxyServer("127.0.0.1", 0, metrics=str)
        await first.start()
        try:
            port = int(first.address.rsplit(":", 1)[1])
            second = ProxyServer("127.0.0.1", port, metrics=str)
            with pytest.raises(DaemonError, match=r"cannot listen on 127\.0\.0\.1"):
                await second.start()
        finally:
            await first.close()

    run(main())


def test_closing_cuts_requests_under_way_and_ends_their_streams(emulator: Emulator) -> None:
    emulator.load_behind(A)
    emulator.set_stream(0.02, 5000)

    async def main() -> None:
        hooks = Hooks()
        async with proxy_for(emulator.url, hooks) as (server, url), client() as c:
            payload = {"model": A, "messages": [], "stream": True}

            async def stream() -> None:
                async with c.stream("POST", url + CHAT, json=payload) as r:
                    async for _ in r.aiter_raw():
                        pass

            task = asyncio.create_task(stream())
            await hooks.wait(lambda: hooks.open)
            await server.close()
            with pytest.raises(httpx.HTTPError):
                await task
        assert not hooks.open

    run(main())


def test_head_requests_get_no_body_and_the_connection_stays_usable(emulator: Emulator) -> None:
    async def main() -> None:
        async with proxy_for(emulator.url) as (_, url), client() as c:
            local = await c.head(url + "/lmkeeperd/nothing")
            forwarded = await c.head(url + "/v1/models")  # the emulator answers HEAD with 501
            after = await c.get(url + "/lmkeeperd/metrics")
        assert local.status_code == 404 and local.content == b""
        assert forwarded.status_code == 501 and forwarded.content == b""
        assert after.status_code == 200 and after.text == "# metrics\n"

    run(main())
