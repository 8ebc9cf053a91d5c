"""Through the real CLI and a real daemon: reach it whatever the config
says, `status` tells why, `select --wait` / `--keep-alive`, `models`, `events`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "google/gemma-3-12b"


def _json(d: DaemonProc, *args: str) -> dict[str, object]:
    done = d.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


def test_a_bad_config_edit_does_not_lock_out_the_cli(daemon: DaemonProc) -> None:
    assert daemon.cli("select", A).returncode == 0
    daemon.wait_status(state="loaded", model=A)
    good = dict(daemon.tables["model"])
    daemon.tables["model"]["idle_timeout"] = "ten minutes"
    daemon.write_config()
    daemon.wait_event("config_invalid")
    status = daemon.cli("status")
    assert status.returncode == 0, status.stderr
    assert "CONFIG ERROR" in status.stdout and "model.idle_timeout" in status.stdout
    problem = json.loads(daemon.cli("status", "--json").stdout)["config_error"]
    assert problem["file"] == str(daemon.config_path)
    assert isinstance(problem["line"], int) and "model.idle_timeout" in problem["message"]
    # Even a file TOML refuses: the socket is read from its [control] line.
    daemon.write_config(daemon.config_path.read_text() + "\n[broken\n")
    wait_until(
        lambda: "TOML" in (daemon.status()["config_error"] or {}).get("message", ""),
        10,
        "the TOML error in status",
    )
    assert daemon.cli("unload").returncode == 0
    selected = daemon.cli("select", B)
    assert selected.returncode == 0, selected.stderr
    daemon.wait_status(state="loaded", model=B)
    daemon.tables["model"] = good
    daemon.write_config()
    fixed = daemon.wait_event("config_fixed")
    assert fixed["path"] == str(daemon.config_path) and "TOML" in fixed["was"]
    assert daemon.status()["config_error"] is None
    assert "CONFIG ERROR" not in daemon.cli("status").stdout


def test_status_says_why_idle_eject_failed_load_and_unload_by_command(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"idle_timeout": "1s", "switch_debounce": "50ms"})
    assert d.cli("select", A, "--wait").returncode == 0
    d.wait_status(timeout=15, state="idle", selected=A, model=None)
    why = d.status()["why"]
    assert why["cause"] == "idle eject" and why["cause_at"].endswith("Z")
    table = d.cli("status").stdout
    row = next(line for line in table.splitlines() if line.startswith("why"))
    assert re.fullmatch(r"why +\d\d:\d\d:\d\d \([\d.]+s ago\): idle eject", row), row
    emulator.fail_next_loads(1, "out of memory")
    d.cli("select", B)
    wait_until(lambda: "load failed" in (d.status()["why"]["cause"] or ""), 10, "load failed")
    assert "out of memory" in d.status()["why"]["cause"]
    assert "out of memory" in d.cli("status").stdout


def test_status_shows_a_load_in_flight_and_a_stale_listing(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    emulator.set_load_delay(30.0)
    daemon.cli("select", A)
    st = wait_until(
        lambda: (s := daemon.status())["why"]["in_flight"] and s, 10, "a load in flight"
    )
    assert st["why"]["in_flight"]["op"] == "load" and st["why"]["in_flight"]["model"] == A
    assert st["why"]["in_flight"]["elapsed_s"] >= 0
    assert st["server"]["listed_ago_s"] is not None and st["server"]["stale"] is False
    assert "loading (" in daemon.cli("status").stdout
    emulator.set_load_delay(0.0)
    daemon.wait_status(state="loaded", model=A)
    emulator.go_down()
    try:
        st = wait_until(lambda: (s := daemon.status())["server"]["stale"] and s, 10, "stale")
        assert st["server"]["reachable"] is False
        assert "STALE" in daemon.cli("status").stdout
    finally:
        emulator.come_back(forget=False)


def test_status_json_without_a_daemon_says_not_running(daemon: DaemonProc) -> None:
    assert daemon.stop() == 0
    done = daemon.cli("status", "--json")
    assert done.returncode == 3
    printed = json.loads(done.stdout)
    assert printed["running"] is False and "no lmkeeperd is running" in printed["error"]
    assert json.loads(daemon.cli("status", "--json").stdout)["socket"] == str(daemon.socket)


def test_select_wait_exits_0_when_loaded_and_1_when_the_load_fails(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    emulator.set_load_delay(0.5)
    done = daemon.cli("select", A, "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"loaded {A}") and done.stderr == ""  # no TTY: no progress
    assert daemon.status()["model"] == A
    again = daemon.cli("select", A, "--wait")  # already loaded: at once
    assert again.returncode == 0, again.stderr
    emulator.fail_next_loads(1, "no room at the inn")
    failed = daemon.cli("select", B, "--wait")
    assert failed.returncode == 1 and failed.stdout == ""
    assert "no room at the inn" in failed.stderr
    emulator.set_load_delay(30.0)
    slow = daemon.cli("select", B, "--wait", "--timeout", "1s")
    assert slow.returncode == 1 and "not loaded after 1.0 s" in slow.stderr
    bad = daemon.cli("select", B, "--wait", "--timeout", "soon")
    assert bad.returncode == 2 and "--timeout" in bad.stderr


def test_select_keep_alive_is_shown_and_applies(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(model={"idle_timeout": "10m", "switch_debounce": "50ms"})
    assert d.cli("select", A, "--keep-alive", "0").returncode == 0
    st = d.wait_status(state="loaded", model=A)
    assert st["keep_alive_s"] == 0 and st["idle_eject_in_s"] is None
    assert "never ejects" in d.cli("status").stdout
    # The same model again: without --keep-alive the earlier one stays; "default" drops it.
    assert d.cli("select", A).returncode == 0
    assert d.status()["keep_alive_s"] == 0
    assert d.cli("select", A, "--keep-alive", "default").returncode == 0
    st = d.wait_status(keep_alive_s=None)
    assert st["idle_eject_in_s"] is not None and "keep alive" not in d.cli("status").stdout
    assert d.cli("select", B, "--keep-alive", "1s", "--wait").returncode == 0
    assert d.status()["keep_alive_s"] == 1.0
    d.wait_status(timeout=15, state="idle", model=None, selected=B)
    assert d.status()["why"]["cause"] == "idle eject"
    bad = d.cli("select", A, "--keep-alive", "-5s")
    assert bad.returncode == 2 and "--keep-alive" in bad.stderr
    refused = d.request({"op": "select", "model": A, "keep_alive": "forever"})
    assert refused["ok"] is False and "keep_alive" in refused["error"]


def test_models_lists_who_loaded_what_and_whether_it_fits(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    assert daemon.cli("select", A, "--wait").returncode == 0
    theirs = emulator.load_behind(B)
    rows = {r["key"]: r for r in _json(daemon, "models")["models"]}  # type: ignore[union-attr]
    assert rows[A]["instances"] == [{"id": emulator.loaded()[A][0], "by": "lmkeeperd"}]
    assert rows[B]["instances"] == [{"id": theirs, "by": "other"}]
    assert rows[A]["memory"]["verdict"] in ("fits", "may not fit")
    assert rows[A]["memory"]["context_length"] > 0 and rows[A]["size_gb"] > 0
    assert rows[A]["quantization"]
    table = daemon.cli("models")
    assert table.returncode == 0
    line = next(x for x in table.stdout.splitlines() if x.startswith(A))
    assert "(lmkeeperd)" in line and "GB" in line


def test_events_prints_json_lines_when_not_on_a_terminal(daemon: DaemonProc) -> None:
    env = daemon.env({"LMKEEPERD_CONFIG": str(daemon.config_path)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmkeeperd", "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(lambda: daemon.status()["subscribers"] >= 1, 10, "the subscription")
        daemon.cli("select", A)
        seen = []
        assert proc.stdout is not None
        while not any(e.get("event") == "load_finished" for e in seen):
            seen.append(json.loads(proc.stdout.readline()))
        assert {"event", "time"} <= set(seen[-1]) and seen[-1]["model"] == A
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # reads and closes both pipes
    assert daemon.stop() == 0
