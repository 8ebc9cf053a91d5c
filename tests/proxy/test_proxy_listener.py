"""The proxy's listener itself, in-process: pipelining, 100-continue, malformed requests,
local paths, ports in use, closing, HEAD (helpers in proxy_harness.py).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from proxy_harness import (
    CHAT,
    A,
    Echo,
    Hooks,
    client,
    proxy_for,
    run,
)

from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import DaemonError
from lmkeeperd.proxy import (
    ProxyServer,
)

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
