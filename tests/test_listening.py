"""The listeners' shared guards: the connection cap, burst logging, the accept guard.

The end-to-end behaviour under real floods and a real EMFILE is in test_e2e_flood.py.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest
from structlog.testing import capture_logs
from test_control_server import until

from lmkeeperd.listening import (
    BurstLog,
    ConnectionCap,
    GuardedStreamProtocol,
    install_accept_guard,
)


def test_the_cap_sheds_the_connection_idle_longest_and_refuses_when_all_are_busy() -> None:
    async def main() -> None:
        cap = ConnectionCap("test", 3)
        closed: list[str] = []
        slots = []
        for name in "abc":
            slot = cap.admit()
            assert slot is not None
            slot.attach(lambda name=name: closed.append(name))
            slots.append(slot)
        a, b, c = slots
        b.idle()
        a.idle()
        c.busy()
        d = cap.admit()  # b has been idle the longest
        assert d is not None and closed == ["b"] and b.released and cap.live == 3
        b.release()  # its connection_lost comes later: counted once
        assert cap.live == 3
        a.busy()
        d.busy()
        assert cap.admit() is None and cap.refused_total == 1  # all busy: refused
        c.release()
        assert cap.admit() is not None and cap.live == 3  # a place freed up
        assert closed == ["b"]  # busy connections were never cut

    with capture_logs() as logs:
        asyncio.run(main())
    events = [(e["event"], e["count"]) for e in logs]
    assert events == [("connections_shed", 1), ("connections_refused", 1)]


def test_connections_that_have_not_begun_are_idle_and_never_served_once_shed() -> None:
    async def main() -> None:
        cap = ConnectionCap("test", 1)
        served: list[bool] = []

        async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            served.append(True)
            w.close()

        loop = asyncio.get_running_loop()
        early = cap.admit()  # accepted in the same burst as the next: not begun yet
        assert early is not None
        assert cap.admit() is not None and early.released
        protocol = GuardedStreamProtocol(asyncio.StreamReader(), serve, loop, early)
        ours, theirs = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
        with theirs:
            theirs.settimeout(5)
            assert theirs.recv(1) == b""  # closed as it began
        assert transport.is_closing() and served == []
        assert cap.live == 1

    asyncio.run(main())


def test_a_cap_below_one_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="proxy: the connection cap must be at least 1, not 0"):
        ConnectionCap("proxy", 0)


def test_a_burst_is_one_line_then_one_summary_with_its_count_then_silence() -> None:
    async def main() -> BurstLog:
        burst = BurstLog("thing_failed", window=0.05)
        for n in range(5):
            burst.hit(n=n)
        # The summary, then the end of the burst.
        await until(lambda: burst._timer is None, "the end of the burst")
        burst.hit(n=9)  # a new burst: logged at once
        burst.close()
        return burst

    with capture_logs() as logs:
        asyncio.run(main())
    assert [(e["event"], e["n"], e["count"]) for e in logs] == [
        ("thing_failed", 0, 1),
        ("thing_failed", 4, 4),
        ("thing_failed", 9, 1),
    ]
    assert all(e["log_level"] == "warning" for e in logs)


def test_the_accept_guard_takes_exactly_asyncios_accept_report_and_passes_the_rest_on() -> None:
    passed: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: passed.append(context))
        install_accept_guard(loop)
        handler = loop.get_exception_handler()
        assert handler is not None
        accept = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, "Too many open files"),
        }
        for _ in range(100):
            loop.call_exception_handler(accept)
        loop.call_exception_handler({"message": "something else", "exception": OSError()})
        loop.call_exception_handler({"message": "socket.accept() out of system resource"})

    with capture_logs() as logs:
        asyncio.run(main())
    assert [(e["event"], e["errno"], e["count"]) for e in logs] == [("accept_failed", "EMFILE", 1)]
    assert [c["message"] for c in passed] == [
        "something else",
        "socket.accept() out of system resource",  # no exception: not the report we know
    ]
