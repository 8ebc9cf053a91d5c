"""Subscriptions on the control socket: events in order, slow and lagging subscribers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog
from control_harness import (
    WAIT_S,
    Peer,
    run,
    serving,
    until,
)

# --- subscriptions --------------------------------------------------------------------------


def test_a_subscriber_receives_published_events_in_order(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (server, handler):
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "subscribe"}) == {"ok": True}
            assert server.subscribers == 1
            # Further lines on a subscription are ignored, not answered.
            await peer.send({"op": "status"})
            for i in range(100):
                server.publish({"event": "tick", "n": i})
            assert [await peer.reply() for _ in range(100)] == [
                {"event": "tick", "n": i} for i in range(100)
            ]
            assert handler.requests == []
            await peer.close()
            await until(lambda: server.subscribers == 0, "the subscription to end")
            assert len(handler.closed) == 1

    run(scenario())


def test_publish_without_subscribers_and_with_bad_events_never_raises(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (server, _):
            server.publish({"event": "nobody_listens"})
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "subscribe"}) == {"ok": True}
            with structlog.testing.capture_logs() as logs:
                server.publish({"event": "bad", "value": object()})
            assert [e["event"] for e in logs] == ["control_error"]
            server.publish({"event": "good"})
            assert await peer.reply() == {"event": "good"}
            await peer.close()

    run(scenario())


def test_a_subscriber_that_never_reads_does_not_block_publish_or_others(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder, subscriber_queue=64) as (server, _):
            stuck = await Peer.connect(folder / "s.sock")
            assert await stuck.ask({"op": "subscribe"}) == {"ok": True}
            reader = await Peer.connect(folder / "s.sock")
            assert await reader.ask({"op": "subscribe"}) == {"ok": True}
            received: list[dict[str, Any]] = []

            async def read_until_final() -> None:
                while True:
                    received.append(await reader.reply())
                    if received[-1]["event"] == "final":
                        return

            reading = asyncio.create_task(read_until_final())
            padding = "x" * 1024  # ten megabytes in all: far more than socket buffers hold
            for i in range(10_000):
                server.publish({"event": "tick", "n": i, "pad": padding})
                if i % 100 == 0:
                    await asyncio.sleep(0)  # let the pumps and the reader run
            assert server.dropped_events > 0
            # The stuck subscriber's queue stays full; the reader's drains, so "final" arrives.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while not reading.done() and loop.time() < deadline:
                server.publish({"event": "final"})
                await asyncio.wait([reading], timeout=0.01)
            await reading
            ticks = [e["n"] for e in received if e["event"] == "tick"]
            assert ticks, "the reading subscriber got no ticks"
            assert ticks == sorted(set(ticks))
            assert server.subscribers == 2
            await reader.close()
        await stuck.close()

    run(scenario())


def test_a_subscriber_that_falls_behind_is_told_how_many_events_it_missed(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder, subscriber_queue=4) as (server, _):
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "subscribe"}) == {"ok": True}
            for i in range(10):  # no await: the queue takes 4, 6 are dropped
                server.publish({"event": "tick", "n": i})
            assert [(await peer.reply())["n"] for _ in range(4)] == [0, 1, 2, 3]
            server.publish({"event": "tick", "n": 10})
            assert await peer.reply() == {"event": "events_dropped", "count": 6}
            assert await peer.reply() == {"event": "tick", "n": 10}
            assert server.dropped_events == 6
            await peer.close()

    run(scenario())
