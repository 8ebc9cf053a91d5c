"""Config files read defensively, edits atomic from lmkeeperd's side.

Real daemon processes against the emulator: real FIFOs, a 100 MB sparse file, a typo path,
an empty file, and rapid in-place edits that truncate the file before writing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, render_toml, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
HUNDRED_MB = 100 * 1024 * 1024


def run_exit(d: DaemonProc, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`lmkeeperd ARGS` to its end (a daemon that must refuse to start): exit code, output."""
    done = subprocess.run(
        [sys.executable, "-m", "lmkeeperd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=d.env(env),
    )
    return done.returncode, done.stdout + done.stderr


def replace_with_fifo(path: Path) -> None:
    fifo = path.with_name("fifo.tmp")
    os.mkfifo(fifo)
    os.replace(fifo, path)


# --- at start -------------------------------------------------------------------------


def test_run_with_a_typo_path_exits_2_naming_it(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False)
    typo = d.dir / "typo" / "config.toml"
    code, out = run_exit(d, "run", "--config", str(typo))
    assert code == 2 and str(typo) in out and "no such file" in out
    # Named through the environment, the file must exist too.
    code, out = run_exit(d, "run", env={"LMKEEPERD_CONFIG": str(typo)})
    assert code == 2 and str(typo) in out
    assert not d.socket.exists()


@pytest.mark.parametrize("kind", ["fifo", "sparse", "directory", "device", "empty"])
def test_run_refuses_a_config_that_is_not_a_small_regular_file(
    daemon_factory: Callable[..., DaemonProc], kind: str
) -> None:
    d = daemon_factory(start=False)
    path = d.config_path
    path.unlink()
    expected = {
        "fifo": "a FIFO",
        "sparse": f"{HUNDRED_MB} bytes",
        "directory": "a directory",
        "device": "a character device",
        "empty": "the file is empty",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(HUNDRED_MB)  # sparse: no disk used, but 100 MB to read
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path(os.devnull)
    else:
        path.write_bytes(b"  \n")
    code, out = run_exit(d, "run", "--config", str(path))
    assert code == 2, out
    assert expected in out and str(path) in out
    if kind != "device":
        code, out = run_exit(d, "config", "check", "--config", str(path))
        assert code == 2 and expected in out


# --- while running --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "sparse"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_fifo_or_a_huge_file_put_at_the_config_path_is_reported_and_never_blocks(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator, kind: str, stop: int
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    with d.subscribe() as events:
        if kind == "fifo":
            replace_with_fifo(d.config_path)
        else:
            with open(d.config_path, "r+b") as f:
                f.truncate(HUNDRED_MB)  # grown in place: the old text, then 100 MB of holes
        invalid = events.wait_for("config_invalid")
        assert ("a FIFO" if kind == "fifo" else f"{HUNDRED_MB} bytes") in invalid["error"]
        # The loop is not blocked: the socket answers, with the last good config running.
        st = d.status()
        assert st["server"]["url"] == emulator.url and st["model"] == A
        # The CLI reads the config leniently to find the socket: an unreadable file gives it
        # no socket path, so it takes the one the daemon recorded (control/socket_record.py),
        # shows the problem, and never hangs.
        done = d.cli("status", timeout=10)
        assert done.returncode == 0 and "CONFIG ERROR" in done.stdout, done.stderr
    assert d.stop(stop, timeout=10) == 0  # and it still hears its signals


def test_an_empty_file_is_never_every_default_and_is_reported_if_it_stays_empty(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    with d.subscribe() as events:
        d.config_path.write_bytes(b"")
        invalid = events.wait_for("config_invalid")
        assert "the file is empty" in invalid["error"]
        st = d.status()
        assert st["server"]["url"] == emulator.url and (st["model"], st["selected"]) == (A, A)
        assert "config_reloaded" not in events.names()
        mark = events.mark()
        d.tables["model"]["selected"] = B
        d.write_config()
        events.wait_for("config_reloaded", after=mark)
        events.wait_for("load_finished", model=B, after=mark)


def read_empty(d: DaemonProc) -> int:
    """How many times the daemon has read the config empty (kept, or applied before the fix)."""
    return len(d.events("config_empty_seen")) + len(d.events("config_reloaded"))


def test_rapid_edits_that_truncate_first_never_send_work_to_another_server(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    """The race once seen: an empty file read between an editor's truncate and its write
    was applied as every default, the server URL flipped to the default, and an unload
    went to the wrong server, leaving a model loaded."""
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    emulator.set_load_delay(0.3)  # each switch is still loading when the next edit comes
    final = A
    for round_ in range(6):
        final = B if round_ % 2 == 0 else A
        d.tables["model"]["selected"] = final
        seen = read_empty(d)
        switches = len(d.events("unload_started"))
        with open(d.config_path, "w", encoding="utf-8"):
            pass  # the editor truncated the file ...
        # ... and the daemon read it empty, while the last switch is still loading (before
        # the fix it applied it: a `config_reloaded` with every default).
        wait_until(lambda s=seen: read_empty(d) > s, 10, "the empty read")
        d.config_path.write_text(render_toml(d.tables), encoding="utf-8")  # ... then wrote it
        wait_until(lambda n=switches: len(d.events("unload_started")) > n, 10, "the switch")
    d.wait_status(state="loaded", model=final, selected=final, timeout=20)
    wait_until(lambda: set(emulator.loaded()) == {final}, 10, "the final model alone")
    urls = {e.get("url") for e in d.log_events() if str(e.get("event")).startswith("server_")}
    assert urls <= {emulator.url}, urls
    assert d.status()["server"]["url"] == emulator.url
    assert not [e for e in d.events("config_invalid") if "empty" in e.get("error", "")]
    assert len(unloads_of(emulator)) >= 6  # every switch's unload reached the emulator


# --- errors in status are text; the stop bound ------------------------------------------


def test_server_text_in_errors_is_printable_and_never_holds_the_token(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    token = "tok-0123456789abcdef"
    emulator.set_token(token)
    d = daemon_factory(env={"LM_API_TOKEN": token})
    emulator.fail_next_loads(1, f"bad\x1b[2J\x00\x07 bytes\udcff\u202e {token} " + "x" * 5000)
    d.request({"op": "select", "model": A})
    d.wait_event("load_failed", model=A)
    st = d.wait_status(state="idle")
    error = st["last_error"]
    assert error and error.isprintable() and token not in error
    assert "bad" in error and len(error) <= 600
    assert token not in d.log_text()


def log_time(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()


def test_L16_the_stop_bound_holds_with_a_hung_server(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # Once, the wait for the unload took the whole bound, and the cleanup came on top.
    d = daemon_factory(model={"shutdown_timeout": "2s"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    emulator.hang_unloads(True)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=10) == 0
    outside = time.monotonic() - started
    assert d.events("shutdown_unload_timed_out")
    inside = log_time(d.events("daemon_stopped")[-1]) - log_time(d.events("daemon_stopping")[-1])
    # Measured by the daemon's own clock, from the stop to the end of the cleanup.
    assert inside < 2.0, f"stopped {inside:.3f}s after it began stopping (bound 2s)"
    print(f"stop with a hung server: {inside:.3f}s in the daemon, {outside:.3f}s to exit")


def test_config_check_refuses_inject_token_on_a_proxy_others_can_reach(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False, proxy={"listen": "0.0.0.0:0", "inject_token": True})
    code, out = run_exit(d, "config", "check", "--config", str(d.config_path))
    assert code == 2 and "proxy.inject_token" in out and "loopback" in out
    code, out = run_exit(d, "run", "--config", str(d.config_path))
    assert code == 2 and "proxy.inject_token" in out
