"""sd_notify against a real AF_UNIX datagram listener, as systemd would have it."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
import structlog

from lmkeeperd.daemon.sdnotify import Notifier


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket at a short path; yields ($NOTIFY_SOCKET value, socket)."""
    folder = tempfile.mkdtemp(dir="/tmp", prefix="lk")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping_and_watchdog_are_sent_as_datagrams(
    listener: tuple[str, socket.socket],
) -> None:
    address, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready()
    assert received(sock) == "READY=1"
    notifier.ready("serving")
    assert received(sock) == "READY=1\nSTATUS=serving"
    notifier.status("loading qwen")
    assert received(sock) == "STATUS=loading qwen"
    notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    notifier.stopping()
    assert received(sock) == "STOPPING=1"


def test_notify_sends_all_fields_in_one_datagram_and_keeps_values_on_one_line(
    listener: tuple[str, socket.socket],
) -> None:
    address, sock = listener
    Notifier.from_env({"NOTIFY_SOCKET": address}).notify(STATUS="two\nlines", ERRNO=5)
    assert received(sock) == "STATUS=two lines\nERRNO=5"


def test_reloading_carries_the_monotonic_clock_in_microseconds(
    listener: tuple[str, socket.socket],
) -> None:
    address, sock = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": address}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(sock).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux")
def test_an_abstract_socket_name_is_used_with_a_leading_nul() -> None:
    name = f"lk-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == "READY=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_notify_socket_everything_is_a_quiet_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled
    with structlog.testing.capture_logs() as logs:
        notifier.ready()
        notifier.reloading()
        notifier.stopping()
    assert logs == []


def test_an_unsupported_address_disables_notifications_with_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert [e["event"] for e in logs] == ["sd_notify_unsupported_socket"]


def test_a_failing_send_never_raises_and_warns_once() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent/lk/notify"})
    with structlog.testing.capture_logs() as logs:
        notifier.ready()
        notifier.status("x")
        notifier.watchdog()
    levels = [(e["event"], e["log_level"]) for e in logs]
    assert levels == [
        ("sd_notify_failed", "warning"),
        ("sd_notify_failed", "debug"),
        ("sd_notify_failed", "debug"),
    ]


def test_a_full_receiver_does_not_block_the_sender(listener: tuple[str, socket.socket]) -> None:
    address, _sock = listener  # never read: its queue fills up
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    with structlog.testing.capture_logs() as logs:
        for _ in range(5000):
            notifier.status("x" * 200)
    assert any(e["event"] == "sd_notify_failed" for e in logs)


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    environ: dict[str, str], interval: float | None
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})
    assert notifier.watchdog_interval() == interval


def test_no_watchdog_interval_without_a_notify_socket() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "20000000"}).watchdog_interval() is None


def test_a_relative_socket_path_is_not_resolved_against_the_working_folder() -> None:
    with structlog.testing.capture_logs():
        assert not Notifier.from_env({"NOTIFY_SOCKET": "notify"}).enabled
