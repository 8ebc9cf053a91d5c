"""The control socket's subscribers: a bounded queue each, so slow ones never slow the daemon.

`publish` never blocks: it drops the event for a subscriber whose queue is full, counting it.
When the subscriber catches up, it first receives ``{"event": "events_dropped", "count": N}``
(an extension of the event list in interface.md) so it knows to re-read the status.

A subscribed connection only carries events, one JSON line each; anything the client sends
afterwards is read and ignored (replies interleaved with events would be ambiguous; a client
opens a second connection for requests). The subscription ends when the client closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from lmkeeperd.control.protocol import MAX_LINE, encode

log = structlog.get_logger()


@dataclass(slots=True, eq=False)
class _Subscriber:
    conn_id: int
    queue: asyncio.Queue[bytes]
    missed: int = 0
    """Events dropped since the last one that got through."""


class Subscribers:
    """Every subscribed connection of one server, and the events dropped for them."""

    def __init__(self, queue_size: int, *, closing: Callable[[], bool]) -> None:
        if queue_size < 2:
            # One slot for a pending event plus one for the events_dropped marker before it.
            raise ValueError("subscriber_queue must be at least 2")
        self._queue_size = queue_size
        self._closing = closing
        self._subscribers: set[_Subscriber] = set()
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    @property
    def dropped(self) -> int:
        """Events dropped for slow subscribers since start, over all subscribers."""
        return self._dropped

    def publish(self, event: Mapping[str, Any]) -> None:
        """Send `event` to every subscriber; never blocks. Call from the event loop's thread."""
        if not self._subscribers:
            return
        try:
            data = encode(event)
        except (TypeError, ValueError) as e:
            log.error("control_error", error=f"event is not plain JSON: {e}")
            return
        for subscriber in self._subscribers:
            self._offer(subscriber, data)

    async def serve(
        self, conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer ``subscribe`` and carry events on this connection until either side ends."""
        subscriber = _Subscriber(conn_id, asyncio.Queue(self._queue_size))
        # Registered before the reply, so no event published after the reply is missed.
        self._subscribers.add(subscriber)
        try:
            writer.write(encode({"ok": True}))
            await writer.drain()
            pump = asyncio.create_task(self._pump(subscriber, writer))
            until_eof = asyncio.create_task(_discard_until_eof(reader))
            try:
                done, _ = await asyncio.wait({pump, until_eof}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pump.cancel()
                until_eof.cancel()
                await asyncio.gather(pump, until_eof, return_exceptions=True)
                if self._closing():
                    # Hand what is still queued to the transport; closing flushes it.
                    while not subscriber.queue.empty():
                        writer.write(subscriber.queue.get_nowait())
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            self._subscribers.discard(subscriber)

    @staticmethod
    async def _pump(subscriber: _Subscriber, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(await subscriber.queue.get())
            await writer.drain()

    def _offer(self, subscriber: _Subscriber, data: bytes) -> None:
        queue = subscriber.queue
        if subscriber.missed:
            # The marker must go before this event, so both need room.
            if queue.maxsize - queue.qsize() < 2:
                self._drop(subscriber)
                return
            queue.put_nowait(encode({"event": "events_dropped", "count": subscriber.missed}))
            subscriber.missed = 0
        if queue.full():
            self._drop(subscriber)
            return
        queue.put_nowait(data)

    def _drop(self, subscriber: _Subscriber) -> None:
        if not subscriber.missed:
            log.warning("control_events_dropped", conn=subscriber.conn_id)
        subscriber.missed += 1
        self._dropped += 1


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(MAX_LINE):
        pass
