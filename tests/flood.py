"""Floods of held-open connections, bounded in count and time, for tests and benchmarks.

Connections are loopback TCP or Unix-socket ones; each is held open without a byte sent
until the flood ends, then all are closed, whatever happened meanwhile.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Flood:
    opened: int = 0
    failed: int = 0  # connects that failed or timed out (a full backlog, a refusal)
    seconds: float = 0.0
    sockets: list[socket.socket] = field(default_factory=list)


def tcp(port: int, timeout: float = 1.0) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def unix(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def ensure_open_files(needed: int) -> None:
    """Raise this process's soft `ulimit -n` to `needed` if the hard limit allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"a flood of {needed} connections needs `ulimit -n` >= {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@contextlib.contextmanager
def held(
    connect: Callable[[], socket.socket], count: int, within: float, give_up_after: int = 20
) -> Iterator[Flood]:
    """Open up to `count` connections, for at most `within` seconds; hold them; close all.

    Opening stops early after `give_up_after` failed connects in a row (the listener's
    queue is full and it accepts nothing more).
    """
    flood = Flood()
    ensure_open_files(count + 256)
    started = time.monotonic()
    deadline = started + within
    in_a_row = 0
    try:
        while flood.opened + flood.failed < count and time.monotonic() < deadline:
            try:
                flood.sockets.append(connect())
                flood.opened += 1
                in_a_row = 0
            except OSError:
                flood.failed += 1
                in_a_row += 1
                if in_a_row >= give_up_after:
                    break
        flood.seconds = time.monotonic() - started
        yield flood
    finally:
        for sock in flood.sockets:
            sock.close()
        flood.sockets.clear()
