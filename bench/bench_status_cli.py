"""`lmkeeperd status` wall time against `python -c pass` in the same venv (target: ratio ≤ 2.5).

Both commands are run alternately, 20 times each (the median of each is compared), so that
whatever else the machine is doing weighs on both alike. Two set-ups are measured:

- defaults: no `--config`, no `$LMKEEPERD_CONFIG`; the config file and the socket are found
  through the user config and runtime folders (XDG_CONFIG_HOME, XDG_RUNTIME_DIR pointed at
  temporary folders), which is how most people run it;
- explicit: `$LMKEEPERD_CONFIG` names a config that sets `[control] socket`.

Both use the console script `.venv/bin/lmkeeperd`, as a user would.

    .venv/bin/python bench/bench_status_cli.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from _harness import (
    MODELS,
    PYTHON,
    EmulatorProcess,
    Figure,
    child_env,
    emit,
    make_daemon,
    median,
    ms,
)
from daemon_harness import render_toml

TARGET = 2.5
LMKEEPERD = str(Path(PYTHON).with_name("lmkeeperd"))


def timed(command: list[str], env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=dict(env), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def compare(env: Mapping[str, str], runs: int) -> tuple[float, float]:
    """(median of `lmkeeperd status`, median of `python -c pass`), run alternately."""
    status: list[float] = []
    bare: list[float] = []
    for _ in range(2):  # warm the page cache for both
        timed([LMKEEPERD, "status"], env)
        timed([PYTHON, "-c", "pass"], env)
    for _ in range(runs):
        status.append(timed([LMKEEPERD, "status"], env))
        bare.append(timed([PYTHON, "-c", "pass"], env))
    return median(status), median(bare)


def figure(setup: str, status: float, bare: float, runs: int) -> Figure:
    ratio = status / bare
    return emit(
        Figure(
            "status_cli",
            f"`lmkeeperd status` / `python -c pass` ({setup})",
            f"{ratio:.2f}",
            "≤ 2.5",
            ratio <= TARGET,
            f"median of {runs} each: {ms(status)} vs {ms(bare)}",
        )
    )


def run(quick: bool = False) -> list[Figure]:
    runs = 10 if quick else 20
    figures = []
    emulator = EmulatorProcess()
    try:
        # Explicit: the config names the socket, $LMKEEPERD_CONFIG names the config.
        daemon = make_daemon(emulator.url)
        try:
            daemon.start(env=child_env())
            daemon.request({"op": "select", "model": MODELS[0]})
            daemon.wait_status(state="loaded", timeout=30)
            env = child_env({"LMKEEPERD_CONFIG": str(daemon.config_path)})
            figures.append(figure("explicit config and socket", *compare(env, runs), runs))
        finally:
            daemon.cleanup()
        figures.append(_defaults(emulator.url, runs))
    finally:
        emulator.stop()
    return figures


def _defaults(url: str, runs: int) -> Figure:
    """The daemon and the CLI both find config and socket through the user folders."""
    home = Path(tempfile.mkdtemp(prefix="lkx", dir="/tmp"))
    try:
        runtime = home / "run"
        runtime.mkdir(mode=0o700)
        config = home / "config" / "lmkeeperd" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(render_toml({"server": {"url": url}, "log": {"format": "json"}}))
        env = child_env(
            {
                "XDG_CONFIG_HOME": str(home / "config"),
                "XDG_RUNTIME_DIR": str(runtime),
                "XDG_STATE_HOME": str(home / "state"),
                "LMKEEPERD_CONFIG": "",
            }
        )
        env.pop("STATE_DIRECTORY", None)
        env.pop("RUNTIME_DIRECTORY", None)
        with open(home / "daemon.log", "wb") as log:
            proc = subprocess.Popen(
                [PYTHON, "-m", "lmkeeperd", "run"], env=env, stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + 30
            while subprocess.run([LMKEEPERD, "status"], env=env, capture_output=True).returncode:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((home / "daemon.log").read_text())
                time.sleep(0.05)
            subprocess.run(
                [LMKEEPERD, "select", MODELS[0]], env=env, check=True, capture_output=True
            )
            return figure("defaults: user config and runtime folders", *compare(env, runs), runs)
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
