"""lmkeeperd/net.py: the one Unix socket path limit, listen addresses, loopback hosts."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmkeeperd.config import parse_config
from lmkeeperd.control import socket_file
from lmkeeperd.errors import ConfigError
from lmkeeperd.net import (
    SOCKET_PATH_MAX,
    is_loopback,
    socket_path_max,
    socket_path_size,
    split_listen,
)

# --- the socket path limit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "limit"),
    [
        ("linux", 107),  # sun_path[108]
        ("darwin", 103),  # sun_path[104]
        ("freebsd14", 103),
        ("openbsd7", 103),
        ("netbsd10", 103),
        ("dragonfly6", 103),
        ("sunos5", 103),  # unknown here: the smaller limit fits everywhere
    ],
)
def test_the_limit_per_platform_leaves_room_for_the_nul(platform: str, limit: int) -> None:
    assert socket_path_max(platform) == limit


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # tmp_path can be long (macOS puts it under /private/var/folders/...); /tmp is short.
    folder = Path(tempfile.mkdtemp(dir="/tmp" if os.path.isdir("/tmp") else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _path_of_size(folder: Path, size: int) -> Path:
    stem = str(folder) + "/"
    if len(stem) + 1 > size:
        pytest.skip(f"the temp folder {folder} is too long to build a {size}-byte path")
    return Path(stem + "s" * (size - len(stem)))


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets here")
def test_the_limit_here_is_the_longest_path_this_system_binds(short_dir: Path) -> None:
    longest = _path_of_size(short_dir, SOCKET_PATH_MAX)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(os.fsencode(longest))
    assert longest.exists()
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        pytest.raises(OSError),
    ):
        sock.bind(os.fsencode(_path_of_size(short_dir, SOCKET_PATH_MAX + 1)))


def test_the_config_and_the_control_server_use_the_same_limit(short_dir: Path) -> None:
    assert socket_file.SOCKET_PATH_MAX == SOCKET_PATH_MAX
    fits = _path_of_size(short_dir, SOCKET_PATH_MAX)
    assert parse_config(f'[control]\nsocket = "{fits}"\n').control.socket == str(fits)
    too_long = _path_of_size(short_dir, SOCKET_PATH_MAX + 1)
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[control]\nsocket = "{too_long}"\n')
    (problem,) = caught.value.problems
    assert problem == (
        f"line 2: control.socket: is {SOCKET_PATH_MAX + 1} bytes long; "
        f"Unix socket paths can have at most {SOCKET_PATH_MAX} here"
    )


def test_the_size_counts_bytes_not_characters() -> None:
    assert socket_path_size("/tmp/a.sock") == 11
    assert socket_path_size("/tmp/é.sock") == len("/tmp/é.sock".encode()) == 12
    assert socket_path_size(Path("/tmp/a.sock")) == socket_path_size(b"/tmp/a.sock") == 11


# --- listen addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:1235", ("127.0.0.1", 1235)),
        (" localhost:0 ", ("localhost", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("lm.example:80", ("lm.example", 80)),
    ],
)
def test_split_listen(address: str, parts: tuple[str, int]) -> None:
    assert split_listen(address) == parts


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("1235", 'expected "host:port"'),
        (":1235", 'expected "host:port"'),
        ("127.0.0.1:", "the port must be a number from 0 to 65535, got ''"),
        ("127.0.0.1:65536", "got '65536'"),
        ("127.0.0.1:-1", "got '-1'"),
        ("127.0.0.1:١٢", "got '١٢'"),  # digits, but not ASCII ones
        ("::1:1235", "an IPv6 address goes in brackets"),
        ("[127.0.0.1]:1235", "only IPv6 addresses go in [brackets]"),
        ("[]:1235", "only IPv6 addresses go in [brackets]"),
        ("my host:1235", "not a host name or IP address: 'my host'"),
    ],
)
def test_split_listen_says_what_is_wrong(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        split_listen(address)


# --- loopback hosts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LocalHost",
        "localhost.",
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "0:0:0:0:0:0:0:1",
    ],
)
def test_loopback_forms(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",  # every interface
        "::",
        "192.168.1.2",
        "10.0.0.1",
        "::2",
        "example.org",
        "localhost.example.org",  # a name anyone's DNS can point anywhere
        "mylocalhost",
        "",
    ],
)
def test_anything_else_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)
