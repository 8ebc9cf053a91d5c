"""`lmkeeperd status` wall time against `python -c pass`, in a clean non-editable venv.

Target: the ratio ≤ 2.5, with and without a running daemon.

The venv is built here, as a user gets it: `python -m venv DIR` and `DIR/bin/pip install
<this checkout>` (not editable: an editable install imports pathlib and more from a .pth file
at every start-up, which slows `python -c pass` too and flatters the ratio). Both commands run
alternately, 20 times each after two warm-up runs of each, and the medians are compared, so
that whatever else the machine is doing weighs on both alike. The console script
`DIR/bin/lmkeeperd` is timed, as a user runs it, with the config and socket found through
the user folders (XDG_CONFIG_HOME, XDG_RUNTIME_DIR pointed at temporary folders):

- no daemon: no config file, nothing on the socket; `status` exits 3;
- with a daemon: `DIR/bin/lmkeeperd run` against the emulator, a model loaded; exits 0.

    .venv/bin/python bench/bench_status_cli.py [--quick] [--venv DIR]

`--venv DIR` reuses (or creates) that venv instead of a temporary one; reinstall after a
change by deleting it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from _harness import MODELS, PYTHON, ROOT, EmulatorProcess, Figure, emit, median, ms
from daemon_harness import render_toml

TARGET = 2.5


def build_venv(folder: Path) -> Path:
    """A venv at `folder` with this checkout installed the way `pip install .` does."""
    if not (folder / "bin" / "lmkeeperd").exists():
        subprocess.run([PYTHON, "-m", "venv", "--clear", str(folder)], check=True)
        subprocess.run(
            [str(folder / "bin" / "pip"), "install", "-q", "--no-warn-script-location", str(ROOT)],
            check=True,
        )
    return folder


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user whose folders are under `home`; no Python overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for name in ("LMKEEPERD_CONFIG", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        env.pop(name, None)
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_RUNTIME_DIR=str(runtime),
        XDG_STATE_HOME=str(home / "state"),
    )
    return env


def timed(command: list[str], env: Mapping[str, str], expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        command, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise RuntimeError(f"{command} exited {done.returncode}, not {expect}")
    return elapsed


def compare(venv: Path, env: Mapping[str, str], runs: int, expect: int) -> tuple[float, float]:
    """(median of `lmkeeperd status`, median of `python -c pass`), run alternately."""
    status_cmd = [str(venv / "bin" / "lmkeeperd"), "status"]
    bare_cmd = [str(venv / "bin" / "python"), "-c", "pass"]
    status: list[float] = []
    bare: list[float] = []
    for _ in range(2):  # warm the page cache for both
        timed(status_cmd, env, expect)
        timed(bare_cmd, env, 0)
    for _ in range(runs):
        status.append(timed(status_cmd, env, expect))
        bare.append(timed(bare_cmd, env, 0))
    return median(status), median(bare)


def figure(setup: str, status: float, bare: float, runs: int) -> Figure:
    ratio = status / bare
    return emit(
        Figure(
            "status_cli",
            f"`lmkeeperd status` / `python -c pass` ({setup}, non-editable venv)",
            f"{ratio:.2f}",
            "≤ 2.5",
            ratio <= TARGET,
            f"median of {runs} each: {ms(status)} vs {ms(bare)}",
        )
    )


def with_daemon(venv: Path, home: Path, env: dict[str, str], runs: int) -> Figure:
    emulator = EmulatorProcess()
    try:
        config = home / "config" / "lmkeeperd" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(render_toml({"server": {"url": emulator.url}, "log": {"format": "json"}}))
        lmkeeperd = str(venv / "bin" / "lmkeeperd")
        with open(home / "daemon.log", "wb") as log:
            proc = subprocess.Popen([lmkeeperd, "run"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while subprocess.run([lmkeeperd, "status"], env=env, capture_output=True).returncode:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((home / "daemon.log").read_text())
                time.sleep(0.05)
            subprocess.run(
                [lmkeeperd, "select", MODELS[0]], env=env, check=True, capture_output=True
            )
            while (
                b"loaded"
                not in subprocess.run(
                    [lmkeeperd, "status"], env=env, capture_output=True
                ).stdout.split(b"\n", 1)[0]
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the model did not load within 30 s")
                time.sleep(0.05)
            return figure("with a daemon", *compare(venv, env, runs, 0), runs)
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        emulator.stop()


def run(quick: bool = False, venv: Path | None = None) -> list[Figure]:
    runs = 10 if quick else 20
    scratch = Path(tempfile.mkdtemp(prefix="lkx", dir="/tmp"))
    try:
        built = build_venv(venv or scratch / "venv")
        home = scratch / "home"
        home.mkdir()
        env = user_env(home)
        figures = [figure("no daemon", *compare(built, env, runs, 3), runs)]
        figures.append(with_daemon(built, home, env, runs))
        return figures
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--venv", type=Path, help="build (or reuse) the venv here")
    arguments = parser.parse_args()
    run(arguments.quick, arguments.venv)
