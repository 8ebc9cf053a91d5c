"""The real daemon process against the emulator over HTTP, through the real socket."""

from __future__ import annotations

import signal
import stat
import time
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"


def loads_of(emulator: Emulator) -> list[str]:
    return [r.body["model"] for r in emulator.requests() if r.path == "/api/v1/models/load"]


def unloads_of(emulator: Emulator) -> list[str]:
    return [r.body["instance_id"] for r in emulator.requests() if r.path == "/api/v1/models/unload"]


def test_select_loads_and_status_reports_it(daemon: DaemonProc, emulator: Emulator) -> None:
    assert daemon.request({"op": "select", "model": A}) == {"ok": True}
    st = daemon.wait_status(state="loaded", model=A)
    assert st["selected"] == A and st["server"]["reachable"] is True
    assert emulator.loaded() == {A: [A]}
    wait_until(lambda: daemon.status()["server"]["loaded"] == [A], what="server view")
    assert loads_of(emulator) == [A]


def test_L3_burst_of_selections_gives_one_load_of_the_last(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"switch_debounce": "300ms"})
    with d.client() as c:
        for i in range(50):
            assert c.request({"op": "select", "model": [A, B][i % 2]})["ok"]
    d.wait_status(state="loaded", model=B)
    assert loads_of(emulator) == [B]


def test_L7_switch_waits_for_stream_end(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # L4's switch (L26's make-before-break would load B beside A while A streams).
    daemon = daemon_factory(model={"switch": "break-before-make"})
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    with daemon.client() as c:
        stream = c.request({"op": "stream_start"})["stream"]
        assert daemon.status()["state"] == "streaming"
        daemon.request({"op": "select", "model": B})
        st = daemon.wait_status(pending=B)
        assert st["state"] == "streaming" and unloads_of(emulator) == []
        assert c.request({"op": "stream_end", "stream": stream}) == {"ok": True}
    daemon.wait_status(state="loaded", model=B)
    assert unloads_of(emulator) == [A]


def test_L8_client_dying_mid_stream_releases_it(daemon: DaemonProc) -> None:
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded")
    with daemon.client() as c:
        c.request({"op": "stream_start"})
        c.request({"op": "stream_start"})
        assert daemon.status()["active_streams"] == 2
    # the connection closed without stream_end
    daemon.wait_status(active_streams=0, state="loaded")


def test_L11_idle_eject_and_L10_activity_restarts_the_timer(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    idle = 1.5
    d = daemon_factory(model={"idle_timeout": f"{idle}s", "switch_debounce": 0})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded")
    # Half the timeout gone, activity restarts it (L10): the eject comes a whole
    # timeout after the activity, not after the load.
    left = wait_until(
        lambda: (
            (s := d.status())["idle_eject_in_s"] is not None
            and s["idle_eject_in_s"] <= idle / 2
            and s["idle_eject_in_s"]
        ),
        what="half the idle timeout gone",
    )
    sent = time.monotonic()
    assert d.request({"op": "activity"}) == {"ok": True}
    assert d.status()["idle_eject_in_s"] >= left + 0.4, "the activity did not restart the timer"
    d.wait_status(state="idle", timeout=10)
    assert d.wait_event("unloaded", model=A)["reason"] == "idle"
    assert emulator.loaded() == {}
    (unload,) = [r for r in emulator.requests() if r.path == "/api/v1/models/unload"]
    assert unload.t >= sent + idle - 0.1, f"ejected {unload.t - sent:.2f} s after the activity"


def test_socket_is_0600_and_garbage_gets_an_error(daemon: DaemonProc) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    with daemon.client() as c:
        c.send({"op": "nope"})
        reply = c.read_message()
        assert reply is not None and reply["ok"] is False and "nope" in reply["error"]
    assert daemon.status()["state"] == "idle"


def test_cli_status_select_unload_and_exit_codes(daemon: DaemonProc, emulator: Emulator) -> None:
    r = daemon.cli("select", A)
    assert r.returncode == 0, r.stderr
    daemon.wait_status(state="loaded", model=A)
    r = daemon.cli("status")
    assert r.returncode == 0 and A in r.stdout and "loaded" in r.stdout
    r = daemon.cli("status", "--json")
    assert r.returncode == 0
    r = daemon.cli("unload")
    assert r.returncode == 0, r.stderr
    assert daemon.status()["state"] == "idle" and emulator.loaded() == {}
    r = daemon.cli("unload")
    assert r.returncode == 1 and "nothing is loaded" in r.stderr
    assert daemon.stop() == 0
    r = daemon.cli("status")
    assert r.returncode == 3 and "no lmkeeperd" in r.stderr.lower()


def test_L16_sigterm_unloads_and_removes_socket(daemon: DaemonProc, emulator: Emulator) -> None:
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded")
    assert daemon.stop(signal.SIGTERM) == 0
    assert emulator.loaded() == {}
    assert not daemon.socket.exists()
    assert daemon.events("unloaded", reason="exit")
