"""The proxy's classification and forwarding, in-process, with a fake daemon behind `ProxyHooks`.

Upstreams are real servers on loopback: the emulator (in threads) and, where
the test must see exactly what arrived, a small echo server in the test's loop
(proxy_harness.py). The listener itself is tested in test_proxy_listener.py, the
end-to-end tests with the real daemon are in test_proxy_e2e.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from proxy_harness import (
    CHAT,
    A,
    Echo,
    Hooks,
    client,
    names_of,
    proxy_for,
    run,
)
from structlog.testing import capture_logs

from lmkeeperd.config import is_loopback, parse_config, split_listen
from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import ConfigError
from lmkeeperd.proxy import (
    ProxySettings,
    SelectionError,
    Token,
    is_inference,
    model_of,
)

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
