"""What LM Studio's websocket channel tells the REST reconcile: is the server there (L29)?

The activity bridge (activity_bridge.py) writes here what the channel's
availability says; the server view (server_view.py) reads it to pace its REST
reconcile and waits here to be asked for a reconcile now:

- the channel open: its closing is the sign that LM Studio went away, so the
  REST reconcile is only a safety net, at most every `SAFETY_NET_S`;
- the channel lost (it was open, the watcher reconnects): the REST reconcile
  waits for the channel's return instead of polling, at most `reconcile_interval`;
- no channel (`clients only`): the REST reconcile at `reconcile_interval`, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

SAFETY_NET_S = 300.0
"""While the channel is open, the REST reconcile runs at most this often (L29)."""


class Liveness:
    """The channel's word on the server, and the request for a reconcile now."""

    def __init__(self) -> None:
        self._recheck = asyncio.Event()
        self._repace = asyncio.Event()  # the channel opened or closed: the pace changed
        self._outage = False
        self.channel_open = False
        self.channel_lost = False

    def channel(self, *, open_: bool, lost: bool) -> None:
        """The channel is open now, or was lost (reconnecting), or neither."""
        if (open_, lost) != (self.channel_open, self.channel_lost):
            self._repace.set()
        self.channel_open, self.channel_lost = open_, lost

    def interval(self, reconcile_interval: float) -> float:
        """How long the REST reconcile may wait for its next look."""
        if self.channel_open:
            return max(reconcile_interval, SAFETY_NET_S)
        return reconcile_interval

    @property
    def awaits_channel(self) -> bool:
        """The channel will say when the server is back: no REST polling meanwhile."""
        return self.channel_lost

    def recheck_now(self, outage: bool = False) -> None:
        """Read the server now (an instance of ours went, or the server went or came back).

        `outage`: the channel lost the server itself. A restart quicker than the REST
        reconcile's own look would otherwise pass for our model unloaded by hand (L18)
        instead of a restart to restore it after (L17).
        """
        self._outage = self._outage or outage
        self._recheck.set()

    def take_outage(self) -> bool:
        """Whether an outage was seen since the last call."""
        outage, self._outage = self._outage, False
        return outage

    def clear(self) -> None:
        self._recheck.clear()

    async def wait(self, pace: Callable[[], float]) -> None:
        """Until `pace()` seconds have passed or `recheck_now` is called.

        `pace` is asked again whenever the channel opens or closes: a reconcile that was
        to come in 15 s waits for the safety net once the channel is open.
        """
        started = time.monotonic()
        while not self._recheck.is_set():
            remaining = started + pace() - time.monotonic()
            if remaining <= 0:
                return
            self._repace.clear()
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on Python 3.11 it swallows a cancellation that arrives just
                # as the event is set, which the stop's own unload does; the reconcile then
                # outlived the stop and the daemon never exited (test_e2e_config.py).
                async with asyncio.timeout(remaining):
                    await _first(self._recheck, self._repace)


async def _first(*events: asyncio.Event) -> None:
    """Until one of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
