"""The proxy's limits in-process: who may use it (Host, Origin), its cap and timeouts.

Upstreams are the echo server of test_proxy_server.py; the end-to-end tests with the real
daemon and real floods are in test_e2e_flood.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from test_control_server import until
from test_proxy_server import Echo, client, proxy_for, run

from lmkeeperd.proxy import Token
from lmkeeperd.proxy.http1 import parse_request
from lmkeeperd.proxy.origin import own_hosts, refusal

HOSTS = own_hosts("127.0.0.1", 1235)


def why(*headers: str, inject_token: bool = True) -> str | None:
    head = "\r\n".join(("GET /v1/models HTTP/1.1", *headers)).encode()
    return refusal(parse_request(head), HOSTS, inject_token=inject_token)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:1235", "localhost:1235", "LOCALHOST:1235", "[::1]:1235"]
)
def test_the_proxys_own_loopback_names_pass(host: str) -> None:
    assert why(f"Host: {host}") is None
    assert why(f"Host: {host}", f"Origin: http://{host}") is None


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (("Host: attacker.example:1235",), "Host 'attacker.example:1235'"),
        (("Host: 127.0.0.1:9999",), "Host '127.0.0.1:9999'"),
        (("Host: 127.0.0.1",), "Host '127.0.0.1'"),
        ((), "no Host header"),
        (("Host: 127.0.0.1:1235", "Host: evil:1235"), "several Host headers"),
        (("Host: 127.0.0.1:1235", "Origin: https://attacker.example"), "Origin 'https://"),
        (("Host: 127.0.0.1:1235", "Origin: null"), "Origin 'null'"),
        (("Host: 127.0.0.1:1235", "Origin: http://localhost:3000"), "Origin 'http://localhost"),
        (("Host: 127.0.0.1:1235", "Origin: https://127.0.0.1:1235"), "Origin 'https://127"),
    ],
)
def test_with_inject_token_anything_else_is_refused_naming_what(
    headers: tuple[str, ...], named: str
) -> None:
    reason = why(*headers)
    assert reason is not None and reason.startswith(named), reason


def test_without_inject_token_host_is_free_and_only_foreign_origins_are_refused() -> None:
    assert why("Host: lmstudio.lan:1234", inject_token=False) is None
    assert why("Host: x", "Origin: http://localhost:3000", inject_token=False) is None
    assert why("Host: x", "Origin: http://127.0.0.5:80", inject_token=False) is None
    assert why("Host: x", "Origin: http://[::1]:8080", inject_token=False) is None
    for origin in ("https://attacker.example", "null", "http://localhost.attacker.example"):
        assert why("Host: x", f"Origin: {origin}", inject_token=False), origin


def test_a_refused_request_gets_a_json_403_and_never_reaches_lm_studio() -> None:
    async def main() -> None:
        async with Echo() as echo:
            settings = {"inject_token": True, "token": Token("tok-5e5e")}
            async with proxy_for(echo.url, **settings) as (_, url), client() as c:
                refused = await c.post(
                    url + "/v1/chat/completions",
                    headers={"Host": "attacker.example"},
                    content=b'{"model": "m"}',
                )
                assert refused.status_code == 403
                error = refused.json()["error"]
                assert error["code"] == "forbidden" and "DNS rebinding" in error["message"]
                assert "tok-5e5e" not in refused.text
                assert echo.connections == 0
                # The connection goes on: the refusal read the body.
                assert (await c.get(url + "/v1/models")).status_code == 200

    run(main())


# --- the cap and the timeouts --------------------------------------------------------------


async def raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    with contextlib.suppress(ConnectionResetError):
        return await asyncio.wait_for(reader.read(), 10)
    return b""


def test_idle_connections_make_room_and_busy_ones_are_refused_503_never_cut() -> None:
    async def main() -> None:
        async with Echo() as echo, proxy_for(echo.url) as (proxy, url):
            proxy.cap.limit = 3
            silent = [await raw(url) for _ in range(3)]
            await until(lambda: proxy.cap.idle == 3, "three idle connections")
            async with client() as c:  # a fourth: the oldest silent one makes room
                assert (await c.get(url + "/v1/models")).status_code == 200
            assert await closed_by_server(silent[0][0]) == b""
            silent[0][1].close()
            # Three requests whose bodies are still on their way: busy, never shed.
            busy = []
            for reader, writer in silent[1:]:
                writer.write(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
                await writer.drain()
                busy.append((reader, writer))
            reader, writer = await raw(url)
            busy.append((reader, writer))
            writer.write(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
            await until(lambda: proxy.cap.idle == 0, "no idle connection")
            over_reader, over_writer = await raw(url)
            answer = await closed_by_server(over_reader)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"]["code"] == "too_many_connections"
            over_writer.close()
            for reader, writer in busy:
                writer.write(b"cd")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200 "), head
                writer.close()

    run(main())


def test_a_head_that_does_not_arrive_in_time_and_an_idle_keep_alive_are_closed() -> None:
    async def main() -> None:
        async with (
            Echo() as echo,
            proxy_for(echo.url) as (proxy, url),
        ):
            proxy._head_timeout = 0.2
            proxy._keepalive_timeout = 0.4
            nothing = await raw(url)
            partial = await raw(url)
            partial[1].write(b"GET /v1/models HTTP/1.1\r\nHost: h\r\n")  # slow loris
            kept = await raw(url)
            kept[1].write(b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await asyncio.wait_for(kept[0].readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await closed_by_server(nothing[0]) == b""
            assert await closed_by_server(partial[0]) == b""
            rest = await closed_by_server(kept[0])  # the answer's body, then the close
            assert rest.endswith(b"}")
            for _, writer in (nothing, partial, kept):
                writer.close()
            assert proxy.cap.live == 0

    run(main())


def test_a_request_body_that_stalls_is_cut_whether_read_whole_or_streamed() -> None:
    async def main() -> None:
        async with Echo() as echo, proxy_for(echo.url) as (proxy, url):
            proxy._keepalive_timeout = 0.2
            small = await raw(url)  # read whole before forwarding
            small[1].write(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
            large = await raw(url)  # streamed through: forwarded as it arrives
            large[1].write(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999\r\n\r\n")
            large[1].write(b"x" * (2 * 1024 * 1024))
            assert await closed_by_server(small[0]) == b""
            assert await closed_by_server(large[0]) == b""
            assert proxy.stats.requests_total == 2 and proxy.stats.in_flight == 0
            assert proxy.stats.responses == {"aborted": 2}
            for _, writer in (small, large):
                writer.close()

    run(main())
