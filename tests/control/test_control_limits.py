"""The control socket's cap and first-line timeout, over real Unix sockets in-process.

The fake handler is test_control_server.py's; floods against the real daemon are in
test_e2e_flood.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_control_server import Peer, run, serving, until


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="lk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_newcomer_over_the_cap_takes_the_place_of_the_longest_silent_connection(
    sockdir: Path,
) -> None:
    async def scenario() -> None:
        async with serving(sockdir, max_connections=3) as (server, _):
            silent = [await Peer.connect(server.path) for _ in range(3)]
            await until(lambda: server.cap.idle == 3, "three idle connections")
            newcomer = await Peer.connect(server.path)
            assert (await newcomer.ask({"op": "status"}))["ok"]
            assert await silent[0].rest_until_closed() == b""
            # The others are still there and answer.
            assert (await silent[1].ask({"op": "status"}))["ok"]
            for peer in [*silent, newcomer]:
                await peer.close()

    run(scenario())


def test_stream_holders_subscribers_and_requests_under_way_are_never_cut(
    sockdir: Path,
) -> None:
    async def scenario() -> None:
        async with serving(sockdir, max_connections=3) as (server, handler):
            holder = await Peer.connect(server.path)
            assert (await holder.ask({"op": "stream_start"}))["ok"]
            subscriber = await Peer.connect(server.path)
            assert await subscriber.ask({"op": "subscribe"}) == {"ok": True}
            handler.gate = asyncio.Event()
            waiting = await Peer.connect(server.path)
            await waiting.send({"op": "unload"})
            await until(lambda: len(handler.requests) == 2, "the unload under way")
            await until(lambda: server.cap.idle == 0, "no idle connection")
            refused = await Peer.connect(server.path)
            rest = await refused.rest_until_closed()
            reply = json.loads(rest)
            assert reply["ok"] is False and "too many control connections" in reply["error"]
            # Each of the three carries on. Its stream ended, the holder is an ordinary
            # silent connection (the first to fall silent): it may be shed.
            assert await holder.ask({"op": "stream_end"}) == {"ok": True}
            await until(lambda: server.cap.idle == 1, "the holder idle")
            handler.gate.set()
            assert await waiting.reply() == {"ok": True}
            server.publish({"event": "still_here"})
            assert (await subscriber.reply())["event"] == "still_here"
            await until(lambda: server.cap.idle == 2, "holder and waiting idle")
            newcomer = await Peer.connect(server.path)
            assert (await newcomer.ask({"op": "status"}))["ok"]
            assert await holder.rest_until_closed() == b""
            for peer in (holder, subscriber, waiting, refused, newcomer):
                await peer.close()

    run(scenario())


def test_a_first_line_must_come_in_time_later_silence_is_fine(sockdir: Path) -> None:
    async def scenario() -> None:
        async with serving(sockdir, first_line_timeout=0.2) as (server, handler):
            talker = await Peer.connect(server.path)
            assert (await talker.ask({"op": "status"}))["ok"]
            mute = await Peer.connect(server.path)
            partial = await Peer.connect(server.path)
            await partial.send(b'{"op": "sta')
            assert await mute.rest_until_closed() == b""
            assert await partial.rest_until_closed() == b""
            # Both were cut after the talker's last word: the talker is still served.
            assert (await talker.ask({"op": "status"}))["ok"]
            assert len(handler.closed) == 2  # the handler saw both go (L8)
            for peer in (talker, mute, partial):
                await peer.close()

    run(scenario())
