"""Runs the real `lmkeeperd run` as a subprocess, with a real socket and config file.

Waits are conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal as signals
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmkeeperd.control.client import ControlClient, request
from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import DaemonError, DaemonNotRunning

REPO = Path(__file__).resolve().parent.parent
# L16's stop bound runs from the signal to the process's exit. The margin over it covers
# the test's own polling and a loaded 2-core machine; it is small enough that a daemon
# taking 2 s more than its bound fails.
STOP_MARGIN_S = 1.5


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    return "\n".join(lines)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (DaemonNotRunning, OSError, KeyError) as e:
            last_error = e
        time.sleep(0.01)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}: {last_error}"
    )


def loads_of(emulator: Emulator) -> list[str]:
    """The model of every load request the emulator received, in order."""
    return [r.body["model"] for r in emulator.requests() if r.path == "/api/v1/models/load"]


def unloads_of(emulator: Emulator) -> list[str]:
    """The instance id of every unload request the emulator received, in order."""
    return [r.body["instance_id"] for r in emulator.requests() if r.path == "/api/v1/models/unload"]


def model_listings(emulator: Emulator) -> int:
    """How many times the server was asked what is loaded (each reconcile asks once)."""
    return sum(
        1 for r in emulator.requests() if r.path.startswith("/api/v1/models") and r.method == "GET"
    )


def matches(event: Mapping[str, Any], name: str, match: Mapping[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in match.items())


class Subscription:
    """A `subscribe` connection; keeps every event it has read, in order of arrival."""

    def __init__(self, path: Path) -> None:
        self._client = ControlClient(path, timeout=10)
        ack = self._client.request({"op": "subscribe"})
        if ack != {"ok": True}:
            self._client.close()
            raise AssertionError(f"subscribe was answered with {ack}")
        self.received: list[dict[str, Any]] = []

    def close(self) -> None:
        self._client.close()

    def wait_for(
        self, name: str, timeout: float = 10.0, *, after: int = 0, **match: Any
    ) -> dict[str, Any]:
        """The first event named `name` with `match`, received so far or from now on.

        `after` skips the events received before that position (take it from `mark()`).
        """
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for event in self.received[seen:]:
                if matches(event, name, match):
                    return event
            seen = len(self.received)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no event {name} {match} within {timeout}s; got {self.names()}"
                )
            self._client.set_timeout(remaining)
            try:
                message = self._client.read_message()
            except DaemonError as e:
                raise AssertionError(
                    f"no event {name} {match} within {timeout}s ({e}); got {self.names()}"
                ) from None
            if message is None:
                raise AssertionError(f"the daemon closed the subscription; got {self.names()}")
            self.received.append(message)

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Read (and keep) events until the daemon ends the subscription."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self._client.set_timeout(remaining)
            try:
                message = self._client.read_message()
            except DaemonError as e:
                raise AssertionError(f"the subscription stayed open: {e}") from None
            if message is None:
                return
            self.received.append(message)
        raise AssertionError(f"the subscription stayed open for {timeout}s")

    def mark(self) -> int:
        """The position the next event received will have (for `wait_for(after=...)`)."""
        return len(self.received)

    def index(self, name: str, **match: Any) -> int:
        """Position of the first event received named `name` with `match` (ValueError if none)."""
        for i, event in enumerate(self.received):
            if matches(event, name, match):
                return i
        raise ValueError(f"no event {name} {match} in {self.names()}")

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.received]


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET.

    A thread drains it at once: the kernel queues only a few datagrams per socket, and a
    full queue would make the daemon's notifications fail.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._changed = threading.Condition()
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="notify-listener", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._changed:
                self.messages.append(data.decode("utf-8", "replace"))
                self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float = 10.0, after: int = 0
    ) -> int:
        """The index of the first message from `after` on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for i in range(after, len(self.messages)):
                    if predicate(self.messages[i]):
                        return i
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such notification; got {self.messages}")
                self._changed.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def _limit_open_files(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_files(pid: int) -> int | None:
    """How many file descriptors process `pid` has open (None where /proc is missing)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class DaemonProc:
    """One daemon process with its own folder (config, socket, state, log)."""

    def __init__(self, server_url: str, **tables: Mapping[str, Any]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lk", dir="/tmp"))
        self.socket = self.dir / "s.sock"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "daemon.log"
        self.state_dir = self.dir / "state"
        self.tables: dict[str, dict[str, Any]] = {
            "server": {"url": server_url, "reconcile_interval": "1s"},
            "model": {"switch_debounce": "50ms"},
            "control": {"socket": str(self.socket)},
            "log": {"format": "json", "level": "debug"},
        }
        for name, values in tables.items():
            self.tables.setdefault(name.replace("_", "."), {}).update(values)
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def write_config(self, text: str | None = None) -> None:
        body = render_toml(self.tables) if text is None else text
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, self.config_path)  # as editors save: atomically

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LMKEEPERD_CONFIG", None)
        env["STATE_DIRECTORY"] = str(self.state_dir)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start(
        self, env: Mapping[str, str] | None = None, wait: bool = True, nofile: int | None = None
    ) -> None:
        """Start `lmkeeperd run`; may be called again after the process exited (a restart).

        `nofile`: the daemon's soft limit of open files (`ulimit -n`), as systemd sets it.
        """
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmkeeperd", "run", "--config", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env(env),
            cwd=self.dir,
            preexec_fn=None if nofile is None else lambda: _limit_open_files(nofile),
        )
        if wait:
            wait_until(self._answers, 15, "the daemon's socket")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
        return bool(request(self.socket, {"op": "status"}, timeout=2)["ok"])

    # talking to it ---------------------------------------------------------

    def request(self, obj: Mapping[str, Any], timeout: float = 10) -> dict[str, Any]:
        return request(self.socket, obj, timeout=timeout)

    @contextmanager
    def client(self) -> Iterator[ControlClient]:
        with ControlClient(self.socket, timeout=10) as c:
            yield c

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self.socket)
        try:
            yield sub
        finally:
            sub.close()

    def status(self) -> dict[str, Any]:
        reply = self.request({"op": "status"})
        assert reply["ok"], reply
        status: dict[str, Any] = reply["status"]
        return status

    def wait_status(self, timeout: float = 10, **expected: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            st = self.status()
            return st if all(st.get(k) == v for k, v in expected.items()) else None

        result: dict[str, Any] = wait_until(matches, timeout, f"status {expected}")
        return result

    def cli(
        self, *args: str, timeout: float = 30, config_env: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `lmkeeperd ARGS`; the config comes from $LMKEEPERD_CONFIG unless `config_env`
        is false (then pass --config yourself)."""
        extra = {"LMKEEPERD_CONFIG": str(self.config_path)} if config_env else {}
        return subprocess.run(
            [sys.executable, "-m", "lmkeeperd", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(extra),
        )

    # its log ----------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line[:1] == "<" and line[2:3] == ">":
                line = line[3:]  # a syslog priority, as under journald
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.log_events()
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_event(self, name: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_until(
            lambda: self.events(name, **match), timeout, f"log event {name} {match}"
        )
        return found[-1]

    # stopping ---------------------------------------------------------------

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
        if os.environ.get("LMKEEPERD_TEST_KEEP"):  # keep the folder to read its log
            print(f"kept {self.dir}", file=sys.stderr)
            return
        shutil.rmtree(self.dir, ignore_errors=True)
