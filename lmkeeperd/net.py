"""Listen addresses and Unix socket paths: the checks the config and the servers share.

A leaf module (stdlib only, nothing heavy at import time): the CLI imports it on every
command through the config.
"""

from __future__ import annotations

import os
import re
import sys


def socket_path_max(platform: str = sys.platform) -> int:
    """The longest Unix socket path, in bytes, that `platform` can bind.

    `sun_path` is 108 bytes on Linux and 104 on macOS and the BSDs, NUL included. Any
    other system is given the smaller limit: a path that fits there fits everywhere.
    """
    return 107 if platform.startswith("linux") else 103


SOCKET_PATH_MAX = socket_path_max()
"""The longest Unix socket path, in bytes, on this system."""


def socket_path_size(path: str | bytes | os.PathLike[str]) -> int:
    """How many bytes `path` takes in `sun_path` (without the NUL), as the system encodes it."""
    return len(os.fsencode(path))


_HOST_RE = re.compile(r"[A-Za-z0-9._:%-]+")


def split_listen(address: str) -> tuple[str, int]:
    """("127.0.0.1", 1235) from "127.0.0.1:1235"; IPv6 hosts go in brackets, "[::1]:1235".

    Port 0 lets the system pick a free port. Raises ValueError saying what is wrong.
    """
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host:
        raise ValueError('expected "host:port", like "127.0.0.1:1235"')
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError("only IPv6 addresses go in [brackets]")
    elif ":" in host:
        raise ValueError('an IPv6 address goes in brackets, like "[::1]:1235"')
    if not host or not _HOST_RE.fullmatch(host):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IPs: only this machine can connect there."""
    import ipaddress  # only the daemon's listeners ask; the CLI's imports stay lean

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to an address others can reach
