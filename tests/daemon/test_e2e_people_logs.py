"""Logs for people, from a real daemon. Console lines show values (not
Python reprs) and obey NO_COLOR/FORCE_COLOR; the advisory is one line on the console and
every figure in JSON; log lines and events share the `time` key and form; debug lines say
where each selection came from and which one the debounce swallowed."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from daemon_harness import DaemonProc, wait_until
from gguf_synth import write_lmstudio_model

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ANSI = "\x1b["


def _console(factory: Callable[..., DaemonProc], tmp_path: Path, env: dict[str, str]) -> str:
    """The console log of a daemon that loads a model too big for its budget."""
    models = tmp_path / "models"
    write_lmstudio_model(models, "meta-llama", "Llama-3.1-8B-Instruct-GGUF", "llama-3.1-8b")
    d = factory(
        start=False,
        log={"format": "console", "level": "debug"},
        memory={"models_dir": str(models), "budget_fraction": 0.01},
        model_load={"context_length": 8192},
    )
    d.start(env={"NO_COLOR": "", "FORCE_COLOR": "", **env})
    d.request({"op": "select", "model": B})
    d.wait_status(state="loaded", model=B)
    wait_until(lambda: "memory_advisory" in d.log_text(), what="the advisory's console line")
    assert d.stop() == 0
    return d.log_text()


def test_console_lines_show_values_and_the_advisory_as_one_line(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    text = _console(daemon_factory, tmp_path, {})
    assert ANSI not in text  # a file, not a terminal: no colour
    started = next(line for line in text.splitlines() if "load_started" in line)
    assert "draft=-" in started or "draft=false" in started, started
    for repr_value in ("=None", "=False", "=True", "='"):
        assert repr_value not in text, repr_value
    advisory = [line for line in text.splitlines() if "memory_advisory" in line]
    assert len(advisory) == 1, advisory
    line = advisory[0]
    assert f"memory_advisory: {B} may not fit in memory" in line
    for field in ("required_gb=", "kv_cache_gb=", "message=", "Loading anyway"):
        assert field not in line, field
    assert len(line) < 400, len(line)


@pytest.mark.parametrize(
    ("env", "coloured"),
    [
        ({"FORCE_COLOR": "1"}, True),
        ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),  # NO_COLOR wins
        ({"FORCE_COLOR": "0"}, False),
    ],
)
def test_force_color_and_no_color(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path, env: dict[str, str], coloured: bool
) -> None:
    assert (ANSI in _console(daemon_factory, tmp_path, env)) is coloured


def test_log_lines_and_events_share_the_time_key(daemon: DaemonProc) -> None:
    with daemon.subscribe() as sub:
        daemon.request({"op": "select", "model": A})
        event = sub.wait_for("load_started")
    daemon.wait_status(state="loaded", model=A)
    assert TIME.fullmatch(event["time"]), event
    logged = daemon.wait_event("load_started")
    assert "timestamp" not in logged and TIME.fullmatch(logged["time"]), logged
    assert all("time" in line and "timestamp" not in line for line in daemon.log_events())


def test_selection_received_names_its_source(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(model={"selected": A})
    at_start = d.wait_event("selection_received", model=A)
    assert at_start["source"] == "config" and at_start["level"] == "debug"
    assert at_start["path"] == str(d.config_path)

    cli = subprocess.Popen(
        [sys.executable, "-m", "lmkeeperd", "select", B],
        env=d.env({"LMKEEPERD_CONFIG": str(d.config_path)}),
        stdout=subprocess.DEVNULL,
    )
    assert cli.wait(30) == 0
    by_socket = d.wait_event("selection_received", model=B)
    assert by_socket["source"] == "socket" and by_socket["pid"] == cli.pid
    # The kernel names a process after the file it executed: this interpreter's (a symlink).
    names = {Path(sys.executable).name, Path(sys.executable).resolve().name}
    assert by_socket["process"] in names, (by_socket, names)

    d.tables["model"]["selected"] = A
    d.write_config()  # an edited `selected` is a selection too
    edited = d.wait_event("selection_received", source="config", model=A)
    assert edited["path"] == str(d.config_path)

    d.request({"op": "select", "model": B})
    d.wait_status(state="loaded", model=B)
    assert d.stop() == 0
    d.start()  # the socket's last choice is restored; the config did not change since
    restored = d.wait_event("selection_received", source="restored")
    assert restored["model"] == B and Path(restored["path"]).parent == d.state_dir


def test_selection_superseded_at_debug(daemon_factory: Callable[..., DaemonProc]) -> None:
    d = daemon_factory(model={"switch_debounce": "2s"})
    with d.client() as c:
        c.request({"op": "select", "model": A})
        c.request({"op": "select", "model": B})
    swallowed = d.wait_event("selection_superseded")
    assert (swallowed["model"], swallowed["by"], swallowed["level"]) == (A, B, "debug")
    d.wait_status(state="loaded", model=B, timeout=15)


def test_selection_received_from_a_proxy_request(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(
        proxy={"listen": "127.0.0.1:0", "select_on_request": True}, model={"switch_debounce": 0}
    )
    url = "http://" + str(d.status()["proxy"]["listen"]) + "/v1/chat/completions"
    body = {"model": A, "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(url, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    by_proxy = d.wait_event("selection_received", source="proxy")
    assert by_proxy["model"] == A and by_proxy["level"] == "debug"
