"""On a terminal: `select --wait` draws a live progress line, `events` prints for people."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"


class Terminal:
    """A process whose stdin, stdout and stderr are a pseudo-terminal; keeps what it wrote."""

    def __init__(self, daemon: DaemonProc, *args: str) -> None:
        self._master, slave = pty.openpty()
        env = daemon.env({"LMKEEPERD_CONFIG": str(daemon.config_path)})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmkeeperd", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.output = ""

    def read_until(self, predicate: object, timeout: float = 15) -> str:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate(self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"terminal output so far: {self.output!r}")
            ready, _, _ = select.select([self._master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self._master, 4096)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                if not chunk and not predicate(self.output):
                    raise AssertionError(f"terminal closed; output: {self.output!r}")
                self.output += chunk.decode("utf-8", "replace")
        return self.output

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(10)
        os.close(self._master)
        return code


def test_select_wait_shows_live_progress_on_a_terminal(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    emulator.set_load_delay(1.5)
    term = Terminal(daemon, "select", A, "--wait")
    try:
        term.read_until(lambda out: f"loaded {A}" in out)
        assert term.proc.wait(10) == 0
    finally:
        term.close()
    progress = [part for part in term.output.split("\r\x1b[2K") if part.startswith(f"{A}: ")]
    assert any("loading" in p and p.rstrip().endswith(" s") for p in progress), term.output
    assert len(progress) >= 2  # redrawn in place while the load runs


def test_events_are_readable_lines_on_a_terminal(daemon: DaemonProc) -> None:
    term = Terminal(daemon, "events")
    try:
        wait_until(lambda: daemon.status()["subscribers"] >= 1, 10, "the subscription")
        daemon.cli("select", A)
        out = term.read_until(lambda out: "load_finished" in out)
    finally:
        term.close()
    line = next(x for x in out.splitlines() if "load_finished" in x)
    assert not line.lstrip().startswith("{") and f"model={A}" in line
    assert line[2] == ":" and line[5] == ":"  # HH:MM:SS first


def test_no_daemon_names_the_configs_problem_on_a_terminal(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False, model={"idle_timeout": "ten minutes"})
    term = Terminal(d, "status")
    try:
        out = term.read_until(lambda out: "lmkeeperd run` would refuse it" in out)
        assert term.proc.wait(10) == 3
    finally:
        term.close()
    assert "model.idle_timeout" in out and f"no socket at {d.socket}" in out
