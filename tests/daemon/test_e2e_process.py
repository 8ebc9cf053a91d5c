"""The daemon as a process: stopping (L16), its socket file, sd_notify, and its log lines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from daemon_harness import STOP_MARGIN_S, DaemonProc, NotifyListener, loads_of, unloads_of

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
UNLOAD = "/api/v1/models/unload"


def load(daemon: DaemonProc, model: str = A) -> None:
    daemon.request({"op": "select", "model": model})
    daemon.wait_status(state="loaded", model=model)


def test_L16_sigterm_with_a_hung_server_exits_0_within_the_bound(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"shutdown_timeout": "1s"})
    load(d)
    emulator.hang_unloads(True)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    emulator.wait_for_request(UNLOAD)
    d.signal(signal.SIGTERM)  # stop is idempotent: a second one neither hurts nor hurries
    assert d.wait_exit(timeout=15) == 0
    elapsed = time.monotonic() - started  # from the first signal to the exit
    assert elapsed < 1 + STOP_MARGIN_S, f"stopped in {elapsed:.2f} s against a 1 s bound"
    assert emulator.wait_for_request(UNLOAD).body == {"instance_id": A}  # it did try
    assert d.events("shutdown_unload_timed_out")
    assert not d.socket.exists()


def test_L16_a_second_sigint_exits_at_once_even_with_a_hung_unload(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"shutdown_timeout": "60s"})
    load(d)
    emulator.hang_unloads(True)
    d.signal(signal.SIGINT)
    emulator.wait_for_request(UNLOAD)  # the first one is being honoured: shutdown has begun
    d.signal(signal.SIGINT)
    assert d.wait_exit(timeout=10) == 130  # far less than the 60 s bound: at once


def test_L16_sigterm_during_a_load_leaves_nothing_of_ours_loaded(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"shutdown_timeout": "5s"})
    emulator.set_load_delay(0.5)
    d.request({"op": "select", "model": A})
    request = emulator.wait_for_request("/api/v1/models/load")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    # LM Studio finishes a load whose client went away; that instance is lmkeeperd's to unload.
    emulator.wait_until(
        lambda: any(r.t == request.t and r.t_done is not None for r in emulator.requests())
    )
    assert emulator.loaded() == {}


def test_L16_subscribers_see_the_exit_unload_before_the_daemon_hangs_up(
    daemon: DaemonProc,
) -> None:
    load(daemon)
    with daemon.subscribe() as events:
        daemon.signal(signal.SIGTERM)
        events.wait_closed()
    assert daemon.wait_exit() == 0
    assert events.wait_for("unloaded", timeout=0.1, model=A)["reason"] == "exit"
    assert events.index("state_changed", to="unloading") < events.index("unloaded")


def test_L16_stop_with_unload_on_exit_off_leaves_the_model_loaded(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"unload_on_exit": False})
    load(d)
    assert d.stop() == 0
    assert emulator.loaded() == {A: [A]} and unloads_of(emulator) == []
    assert not d.events("unloaded")
    d.start()  # L17: the restarted daemon adopts what it left loaded
    st = d.wait_status(state="loaded", model=A)
    assert st["adopted"] is True and st["selected"] == A
    assert loads_of(emulator) == [A] and emulator.loaded() == {A: [A]}


def journal_stream_of(path: os.PathLike[str]) -> str:
    """The $JOURNAL_STREAM value naming the file the daemon's stdout will be."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_a_second_daemon_on_a_live_socket_refuses_to_start(
    daemon: DaemonProc, daemon_factory: Callable[..., DaemonProc]
) -> None:
    second = daemon_factory(start=False, control={"socket": str(daemon.socket)})
    second.log_path.touch()
    second.start(wait=False, env={"JOURNAL_STREAM": journal_stream_of(second.log_path)})
    assert second.wait_exit() != 0
    lines = [line for line in second.log_text().splitlines() if "daemon_start_failed" in line]
    assert len(lines) == 1 and lines[0].startswith("<3>")  # an error, for journalctl -p err
    failed = json.loads(lines[0][3:])
    assert "already running" in failed["error"] and str(daemon.socket) in failed["error"]
    assert daemon.socket.exists() and daemon.status()["state"] == "idle"
    load(daemon)


def test_a_stale_socket_file_is_replaced_and_a_crash_is_recovered_from(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(start=False)
    d.socket.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(d.socket))  # closed without unlinking, as a crash leaves it
    assert d.socket.is_socket()
    d.start()
    assert len(d.events("control_stale_socket_removed")) == 1
    load(d)
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL  # a real crash: nothing cleaned up
    assert d.socket.is_socket()
    gone = d.cli("status")
    assert gone.returncode == 3 and "no lmkeeperd is running" in gone.stderr
    d.start()
    assert len(d.events("control_stale_socket_removed")) == 2
    st = d.wait_status(state="loaded", model=A)  # the remembered selection, taken back
    # Not "adopted" (L17: somebody else's): the journal says the crashed daemon loaded it (L22).
    assert st["adopted"] is False and loads_of(emulator) == [A]


def test_sd_notify_ready_status_watchdog_reloading_stopping_in_order(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False)
    notify = NotifyListener(d.dir / "notify")
    try:
        d.start(
            wait=False,
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"},
        )
        ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), timeout=15)
        assert d.status()["state"] == "idle"  # READY came only once the socket listened
        d.request({"op": "select", "model": A})
        loaded = notify.wait_for(lambda m: f"STATUS=loaded: {A}" in m, after=ready)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: m.startswith("RELOADING=1"), after=loaded)
        fields = dict(line.split("=", 1) for line in notify.messages[reloading].splitlines())
        assert int(fields["MONOTONIC_USEC"]) >= before  # systemd's clock, and after the signal
        reloaded = notify.wait_for(lambda m: m.startswith("READY=1"), after=reloading)
        # Pings repeat: wait for a second one before stopping. Everything above can take
        # less than one 100 ms interval, and then a stop sent at once left one ping only.
        first = notify.wait_for(lambda m: m == "WATCHDOG=1")
        second = notify.wait_for(lambda m: m == "WATCHDOG=1", after=first + 1)
        d.signal(signal.SIGTERM)
        stopping = notify.wait_for(lambda m: m == "STOPPING=1", after=reloaded)
        assert d.wait_exit() == 0
        assert ready < loaded < reloading < reloaded < stopping
        assert first < second < stopping
        assert any(m.startswith("STATUS=loading") for m in notify.messages[ready:loaded])
    finally:
        notify.close()


def _produce_every_level(d: DaemonProc, emulator: Emulator) -> None:
    emulator.fail_next_loads(1, "no room")
    d.request({"op": "select", "model": A})
    d.wait_event("load_failed")
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    d.request({"op": "unload"})
    assert d.stop() == 0


def _check_line(event: dict[str, Any]) -> None:
    assert isinstance(event["event"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", event["event"])
    assert event["level"] in {"debug", "info", "warning", "error"}
    stamp = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert stamp.utcoffset() is not None and stamp.utcoffset() == UTC.utcoffset(None)


def test_logs_are_json_lines_with_utc_timestamps_levels_and_documented_events(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    _produce_every_level(daemon, emulator)
    lines = daemon.log_text().splitlines()
    assert lines
    events = [json.loads(line) for line in lines]  # every line: no stray prints, no tracebacks
    for event in events:
        _check_line(event)
    by_name = {e["event"]: e for e in events}
    assert by_name["state_changed"].keys() >= {"from", "to", "model"}
    assert by_name["load_started"]["model"] == A
    assert by_name["load_finished"].keys() >= {"model", "seconds"}
    assert (
        by_name["load_failed"]["level"] == "warning"
        and "no room" in by_name["load_failed"]["error"]
    )
    assert by_name["unloaded"]["reason"] == "command"


def test_under_journald_every_line_starts_with_its_syslog_priority(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(start=False)
    d.log_path.touch()
    d.start(env={"JOURNAL_STREAM": journal_stream_of(d.log_path)})
    _produce_every_level(d, emulator)
    priorities = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}
    seen = set()
    for line in d.log_text().splitlines():
        match = re.match(r"<(\d)>(.*)$", line)
        assert match, line
        event = json.loads(match.group(2))
        _check_line(event)
        assert line.startswith(priorities[event["level"]])
        seen.add(event["level"])
    assert {"debug", "info", "warning"} <= seen
