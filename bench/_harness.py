"""What every benchmark shares: the emulator and the daemon as real processes, and figures.

Benchmarks start `python -m lmkeeperd.emulator --port 0` and `python -m lmkeeperd run` as
their own processes (the daemon through tests/daemon_harness.py, as the end-to-end tests
do), talk to the daemon over its real socket and read the emulator's request log over its
HTTP control API. `time.monotonic()` is one clock for every process on Linux and macOS, so
the emulator's arrival times compare directly with the benchmark's own.

Bytecode: child processes run with `PYTHONPYCACHEPREFIX` pointing at a cache folder and
without `PYTHONDONTWRITEBYTECODE`, so that imports read cached bytecode as they do for an
installed package. Development shells often set PYTHONDONTWRITEBYTECODE, and then every
start-up compiles lmkeeperd from source, which no user ever pays for.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "daemon"))  # bench_soak.py imports the soak

from daemon_harness import DaemonProc  # noqa: E402

PYTHON = sys.executable
PYCACHE = Path(tempfile.gettempdir()) / "lmkeeperd-bench-pycache"

# The models the benchmarks use, all in the emulator's default catalog.
MODELS = (
    "qwen/qwen3-4b-2507",
    "meta-llama/llama-3.1-8b-instruct",
    "qwen/qwen2.5-0.5b-instruct",
    "google/gemma-3-12b",
    "openai/gpt-oss-20b",
)
LOAD = "/api/v1/models/load"
UNLOAD = "/api/v1/models/unload"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child Python: cached bytecode, unbuffered output."""
    env = dict(os.environ)
    # Empty means unset to Python, and survives DaemonProc.env()'s update of os.environ.
    env["PYTHONDONTWRITEBYTECODE"] = ""
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def warm_bytecode() -> None:
    """Compile lmkeeperd and its dependencies into the cache once, before anything is timed."""
    modules = ("daemon.driver", "cli.parser", "emulator", "cli.render")
    code = "import " + ", ".join(f"lmkeeperd.{m}" for m in modules)
    subprocess.run([PYTHON, "-c", code], env=child_env(), check=True)


# --- the machine -------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the machine: OS, CPUs, CPU model, Python."""
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({_cpu_model()}), Python {platform.python_version()}"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- figures -----------------------------------------------------------------------


@dataclass(slots=True)
class Figure:
    """One measured figure, next to its target."""

    bench: str
    name: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: a figure without a target
    note: str = ""
    load: str = field(default_factory=load_average)

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "info"}[self.ok]

    def line(self) -> str:
        target = f" (target {self.target}: {self.verdict})" if self.target else ""
        note = f"; {self.note}" if self.note else ""
        return (
            f"{self.bench}: {self.name} = {self.value}{target}{note} "
            f"[load {self.load}; {machine()}]"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "name": self.name,
            "value": self.value,
            "target": self.target,
            "ok": self.ok,
            "note": self.note,
            "load": self.load,
        }


def emit(figure: Figure) -> Figure:
    print(figure.line(), flush=True)
    return figure


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank: the value at least p% of samples reach."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# --- the emulator as a process -------------------------------------------------------


class EmulatorProcess:
    """`python -m lmkeeperd.emulator --port 0`, driven over its /_emulator/ control API."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "lmkeeperd.emulator", "--port", "0", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the emulator did not print its URL (got {self.url!r})")

    def _call(self, method: str, name: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/_emulator/{name}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def control(self, name: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", name, dict(body or {}))

    def loaded(self) -> dict[str, list[str]]:
        loaded: dict[str, list[str]] = self._call("GET", "loaded")["loaded"]
        return loaded

    def requests(self, since: float | None = None) -> list[dict[str, Any]]:
        query = "" if since is None else f"?since={since!r}"
        found: list[dict[str, Any]] = self._call("GET", f"requests{query}")["requests"]
        return found

    def frames(self, since: float | None = None) -> list[dict[str, Any]]:
        """Frames channel clients sent (t: monotonic arrival), those after `since` if given."""
        found: list[dict[str, Any]] = self._call("GET", "frames")["frames"]
        return [f for f in found if since is None or f["t"] > since]

    def wait_request(
        self, path: str, *, after: float, timeout: float = 10.0, poll: float = 0.002
    ) -> dict[str, Any]:
        """The first request to `path` that arrived after monotonic time `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.requests(since=after):
                if record["path"] == path:
                    return record
            time.sleep(poll)
        raise TimeoutError(f"no request to {path} within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- the daemon as a process -------------------------------------------------------------


def make_daemon(url: str, **tables: Mapping[str, Any]) -> DaemonProc:
    """A daemon with only the keys given (plus the server URL, its socket and JSON logs).

    Anything not given keeps lmkeeperd's own default, unlike the test harness's defaults.
    """
    d = DaemonProc(url)
    d.tables = {
        "server": {"url": url},
        "control": {"socket": str(d.socket)},
        "log": {"format": "json", "level": "info"},
    }
    for name, values in tables.items():
        d.tables.setdefault(name.replace("_", "."), {}).update(values)
    d.write_config()
    return d


@contextmanager
def running(
    *emulator_args: str, **tables: Mapping[str, Any]
) -> Iterator[tuple[EmulatorProcess, DaemonProc]]:
    """An emulator process and a daemon process pointed at it; both stopped afterwards."""
    emulator = EmulatorProcess(*emulator_args)
    daemon = make_daemon(emulator.url, **tables)
    try:
        daemon.start(env=child_env())
        yield emulator, daemon
    finally:
        daemon.cleanup()
        emulator.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.005)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
