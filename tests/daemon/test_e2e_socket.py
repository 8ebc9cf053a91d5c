"""Every control-socket op of interface.md, against the real daemon and the emulator."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "qwen/qwen2.5-0.5b-instruct"


def test_select_activity_stream_ops_reply_exactly_as_documented(daemon: DaemonProc) -> None:
    assert daemon.request({"op": "select", "model": f"  {A}\t"}) == {"ok": True}
    st = daemon.wait_status(state="loaded", model=A)
    assert st["selected"] == A  # L1: keys are trimmed
    assert daemon.request({"op": "activity"}) == {"ok": True}
    with daemon.client() as c:
        reply = c.request({"op": "stream_start"})
        assert set(reply) == {"ok", "stream"} and reply["ok"] is True
        assert isinstance(reply["stream"], int) and not isinstance(reply["stream"], bool)
        st = daemon.status()
        assert st["state"] == "streaming" and st["idle_eject_in_s"] is None  # L9
        assert c.request({"op": "stream_end", "stream": reply["stream"]}) == {"ok": True}
    st = daemon.wait_status(state="loaded", active_streams=0)
    assert st["idle_eject_in_s"] is not None  # L9: the idle timer runs again


def test_stream_end_without_id_ends_the_newest_stream_of_this_connection(
    daemon: DaemonProc,
) -> None:
    with daemon.client() as first, daemon.client() as second:
        older = first.request({"op": "stream_start"})["stream"]
        newer = first.request({"op": "stream_start"})["stream"]
        others = second.request({"op": "stream_start"})["stream"]
        assert len({older, newer, others}) == 3
        assert daemon.status()["active_streams"] == 3
        assert first.request({"op": "stream_end"}) == {"ok": True}
        assert daemon.status()["active_streams"] == 2
        # The newest one is gone: ending it by id now is an error, the older one still ends.
        gone = first.request({"op": "stream_end", "stream": newer})
        assert gone["ok"] is False and str(newer) in gone["error"]
        assert first.request({"op": "stream_end"}) == {"ok": True}
        assert daemon.status()["active_streams"] == 1
        none_left = first.request({"op": "stream_end"})
        assert none_left["ok"] is False and "no open stream" in none_left["error"]
        unknown = second.request({"op": "stream_end", "stream": 987654})
        assert unknown["ok"] is False and "987654" in unknown["error"]
        assert daemon.status()["active_streams"] == 1  # the other connection's stream is intact
        assert second.request({"op": "stream_end", "stream": others}) == {"ok": True}
    assert daemon.status()["active_streams"] == 0


def test_L13_another_engine_makes_the_daemon_hands_off_until_lmstudio_is_back(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    assert daemon.request({"op": "engine", "name": "ollama"}) == {"ok": True}
    st = daemon.status()
    assert st["engine"] == "ollama" and st["state"] == "idle" and st["model"] is None
    assert daemon.request({"op": "select", "model": C}) == {"ok": True}
    st = daemon.status()
    assert st["selected"] == C and st["pending"] is None  # recorded, nothing scheduled
    with daemon.client() as live:
        # The stream's connection stays open (a closed one would end the stream, L8), so
        # only the hands-off rule can keep it out of the count.
        stream = live.request({"op": "stream_start"})
        assert stream["ok"] is True
        st = daemon.status()
        assert st["active_streams"] == 0 and st["state"] == "idle"
    assert daemon.request({"op": "engine", "name": "lmstudio"}) == {"ok": True}
    assert daemon.status()["engine"] == "lmstudio"
    daemon.request({"op": "select", "model": B})
    daemon.wait_status(state="loaded", model=B)
    # C was never loaded, and A (no longer ours after the hands-off) was left alone.
    assert loads_of(emulator) == [A, B]
    assert unloads_of(emulator) == []
    assert set(emulator.loaded()) == {A, B}


def test_unload_op_current_named_foreign_and_not_loaded(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    nothing = daemon.request({"op": "unload"})
    assert nothing["ok"] is False and "nothing is loaded" in nothing["error"]
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    with daemon.subscribe() as events:
        assert daemon.request({"op": "unload"}) == {"ok": True}
        # "once unloaded": the server has no instance left when the reply arrives
        assert A not in emulator.loaded()
        assert daemon.status()["state"] == "idle"
        assert events.wait_for("unloaded", model=A)["reason"] == "command"
    foreign = emulator.load_behind(B)
    assert daemon.request({"op": "unload", "model": B}) == {"ok": True}
    assert B not in emulator.loaded() and foreign in unloads_of(emulator)
    missing = daemon.request({"op": "unload", "model": C})
    assert missing["ok"] is False and C in missing["error"] and "not loaded" in missing["error"]
    assert daemon.status()["state"] == "idle"


def test_L7_unload_is_refused_while_a_stream_is_open(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    with daemon.client() as c:
        c.request({"op": "stream_start"})
        refused = daemon.request({"op": "unload"})
        assert refused["ok"] is False and "stream" in refused["error"]
        cli = daemon.cli("unload")
        assert cli.returncode == 1 and "stream" in cli.stderr
        assert emulator.loaded() == {A: [A]} and daemon.status()["state"] == "streaming"


def _check_types(status: dict[str, Any]) -> None:
    number = (int, float)
    assert status["state"] in {"idle", "loading", "loaded", "streaming", "unloading"}
    for key in ("model", "selected", "pending", "last_error"):
        assert status[key] is None or isinstance(status[key], str), key
    assert isinstance(status["engine"], str)
    assert isinstance(status["active_streams"], int)
    assert status["idle_eject_in_s"] is None or isinstance(status["idle_eject_in_s"], number)
    server = status["server"]
    assert isinstance(server["url"], str) and isinstance(server["reachable"], bool)
    assert isinstance(server["loaded"], list) and all(isinstance(k, str) for k in server["loaded"])
    memory = status["memory"]
    for key in ("total_gb", "available_gb", "budget_gb"):
        assert isinstance(memory[key], number), key
    assert status["last_advisory"] is None or isinstance(status["last_advisory"], dict)
    assert isinstance(status["pid"], int) and isinstance(status["version"], str)
    assert isinstance(status["uptime_s"], number)


def test_status_has_every_documented_key_with_its_type(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"idle_timeout": "30m"})
    documented = {
        "state", "model", "selected", "pending", "engine", "active_streams", "idle_eject_in_s",
        "server", "memory", "last_error", "last_advisory", "pid", "version", "uptime_s",
    }  # fmt: skip
    st = wait_until(
        lambda: (s := d.status())["server"]["reachable"] is True and s, what="a reconcile"
    )
    assert documented <= set(st)
    assert {"url", "reachable", "loaded"} <= set(st["server"])
    assert {"total_gb", "available_gb", "budget_gb"} <= set(st["memory"])
    _check_types(st)
    assert st["state"] == "idle" and st["model"] is None and st["idle_eject_in_s"] is None
    assert st["engine"] == "lmstudio" and st["server"]["url"] == emulator.url
    assert d.proc is not None and st["pid"] == d.proc.pid
    d.request({"op": "select", "model": A})
    st = d.wait_status(state="loaded", model=A)
    _check_types(st)
    assert st["selected"] == A and 0 < st["idle_eject_in_s"] <= 1800
    wait_until(lambda: d.status()["server"]["loaded"] == [A], what="the server's view")


def test_subscribe_streams_lifecycle_events_as_json_lines(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    with daemon.subscribe() as events:
        daemon.request({"op": "select", "model": A})
        loading = events.wait_for("state_changed", to="loading")
        assert loading["from"] == "idle" and loading["model"] == A
        assert events.wait_for("load_started")["model"] == A
        finished = events.wait_for("load_finished", model=A)
        assert isinstance(finished["seconds"], int | float) and finished["seconds"] >= 0
        loaded = events.wait_for("state_changed", to="loaded")
        assert loaded["from"] == "loading" and loaded["model"] == A
        assert (
            events.index("state_changed", to="loading")
            < events.index("load_finished")
            < events.index("state_changed", to="loaded")
        )
        daemon.request({"op": "unload"})
        assert events.wait_for("unloaded", model=A)["reason"] == "command"
        emulator.fail_next_loads(1, "out of memory: no room for this model")
        daemon.request({"op": "select", "model": B})
        failed = events.wait_for("load_failed", model=B)
        assert "out of memory" in failed["error"]
        assert all(isinstance(e["event"], str) for e in events.received)


def _raw_exchange(path: str, payload: bytes) -> tuple[bytes, bool]:
    """Send `payload`, read one reply line; returns (line, whether the daemon then closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(payload)
        data = b""
        while b"\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        line, _, rest = data.partition(b"\n")
        assert rest == b""
        closed = s.recv(65536) == b""  # EOF, or a timeout error failing the test
        return line, closed


def test_garbage_on_the_socket_gets_errors_and_the_daemon_keeps_serving(
    daemon: DaemonProc,
) -> None:
    path = str(daemon.socket)
    line, closed = _raw_exchange(path, os.urandom(512).replace(b"\n", b"") + b"\xff\n")
    assert json.loads(line)["ok"] is False and closed
    line, closed = _raw_exchange(path, b'{"op": "status", "pad": "' + b"x" * 70 * 1024 + b'"}\n')
    reply = json.loads(line)
    assert reply["ok"] is False and "too long" in reply["error"] and closed
    line, closed = _raw_exchange(path, b"[1,2]\n")
    reply = json.loads(line)
    assert reply["ok"] is False and "object" in reply["error"] and closed
    with daemon.client() as c:
        missing = c.request({"op": "select"})
        assert missing["ok"] is False and "model" in missing["error"]
        still_open = c.request({"op": "status"})  # same connection, still served
        assert still_open["ok"] is True
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
