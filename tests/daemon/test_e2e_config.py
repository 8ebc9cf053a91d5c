"""Config edits while the daemon runs, SIGHUP, and the selection kept across restarts."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, loads_of, render_toml, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "qwen/qwen2.5-0.5b-instruct"


def test_editing_selected_in_the_config_is_a_selection(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    with d.subscribe() as events:
        d.tables["model"]["selected"] = B
        d.write_config()
        assert events.wait_for("config_reloaded")["source"] == "file"
        events.wait_for("load_finished", model=B)
    d.wait_status(state="loaded", model=B, selected=B)
    # The default switch ("auto", both fit this machine's budget) makes before it breaks
    # (L26): A goes once B has landed, so wait for it rather than read the server at once.
    wait_until(lambda: set(emulator.loaded()) == {B}, 10, "A unloaded after B landed")
    assert loads_of(emulator) == [A, B]


def test_editing_idle_timeout_applies_to_the_loaded_model(daemon: DaemonProc) -> None:
    daemon.request({"op": "select", "model": A})
    st = daemon.wait_status(state="loaded", model=A)
    assert st["idle_eject_in_s"] > 60  # the default, 30 minutes
    daemon.tables["model"]["idle_timeout"] = "300ms"
    # Written in place (truncate, then write), as some editors save, not replaced by a rename.
    daemon.config_path.write_text(render_toml(daemon.tables), encoding="utf-8")
    daemon.wait_event("config_reloaded")
    daemon.wait_event("unloaded", model=A, reason="idle")
    daemon.wait_status(state="idle")


def test_invalid_edit_keeps_the_last_good_config_running(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    with d.subscribe() as events:
        d.tables["model"]["selected"] = C
        d.tables["model"]["idel_timeout"] = "5m"  # a typo: an unknown key
        d.write_config()
        sent = events.wait_for("config_invalid")
        assert "model.idel_timeout" in sent["error"]
        logged = d.wait_event("config_invalid")
        assert logged["level"] == "warning" and "model.idel_timeout" in logged["error"]
        del d.tables["model"]["idel_timeout"]
        d.tables["model"]["idle_timeout"] = "five minutes"
        mark = events.mark()
        d.write_config()
        bad_duration = events.wait_for("config_invalid", after=mark)
        assert "model.idle_timeout" in bad_duration["error"]
        assert "config_reloaded" not in events.names()
    st = d.status()
    assert st["selected"] == A and st["model"] == A  # the invalid file's `selected` was not used
    d.request({"op": "select", "model": B})
    d.wait_status(state="loaded", model=B)
    assert C not in loads_of(emulator)
    # Fixed, the file applies in full: its `selected` (C) is now a change, and so is the timeout.
    d.tables["model"]["idle_timeout"] = "300ms"
    d.write_config()
    d.wait_event("config_reloaded")
    d.wait_event("unloaded", model=B, reason="switch")
    d.wait_event("unloaded", model=C, reason="idle")


def test_sighup_reloads_the_config(daemon: DaemonProc) -> None:
    with daemon.subscribe() as events:
        daemon.signal(signal.SIGHUP)
        assert events.wait_for("config_reloaded")["source"] == "sighup"
    assert daemon.wait_event("config_reloaded", source="sighup")["level"] == "info"
    assert daemon.status()["state"] == "idle"


def test_selection_survives_a_restart_and_a_later_config_edit_wins(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    d.request({"op": "select", "model": B})
    d.wait_status(state="loaded", model=B)
    assert d.stop() == 0
    d.start()
    d.wait_status(state="loaded", model=B, selected=B)
    assert d.stop() == 0
    d.tables["model"]["selected"] = C  # edited while the daemon was stopped
    d.write_config()
    d.start()
    d.wait_status(state="loaded", model=C, selected=C)
    assert loads_of(emulator) == [A, B, B, C]


def test_a_selection_made_by_editing_the_config_survives_a_restart(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    d.request({"op": "select", "model": B})  # over the socket: remembered
    d.wait_status(state="loaded", model=B)
    d.tables["model"]["selected"] = C
    d.write_config()
    d.wait_status(state="loaded", model=C)
    d.tables["model"]["selected"] = A  # back to what the file said when B was chosen
    d.write_config()
    d.wait_status(state="loaded", model=A)
    assert d.stop() == 0
    d.start()
    # The newest choice was the file's A; the older socket choice B must not come back.
    d.wait_status(state="loaded", model=A, selected=A)


def test_deleting_the_config_file_mid_run_keeps_the_running_config(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A, "idle_timeout": "1h"})
    d.wait_status(state="loaded", model=A)
    d.config_path.unlink()
    d.wait_event("config_missing")
    st = d.status()
    assert st["server"]["url"] == emulator.url and st["model"] == A
    assert st["idle_eject_in_s"] > 60


def test_L17_switching_server_url_restores_the_model_on_the_new_server(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    with Emulator() as other:
        d.tables["server"]["url"] = other.url
        d.write_config()
        other.wait_until(lambda: other.loaded() == {A: [A]}, timeout=15)
        d.wait_status(state="loaded", model=A)
        assert d.status()["server"]["url"] == other.url
