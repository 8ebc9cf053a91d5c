"""Status answer time and log growth while 2,000 connections are held against a listener.

The daemon runs with `ulimit -n 1024` (systemd's default soft limit) and the proxy on. For
each listener (the proxy's TCP port, the control socket) 2,000 silent loopback connections
are opened and held (tests/flood.py); meanwhile `status` is asked over the socket 20 times
and `lmkeeperd status` run 5 times. Printed: the flood's own figures, the status answer
times (median, max), the daemon's open descriptors and how much its log grew (level info).
Targets: status within 1 s, log growth under 100 KB.

    .venv/bin/python bench/bench_flood.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import time

from _harness import PYTHON, EmulatorProcess, Figure, child_env, emit, make_daemon, median, ms
from daemon_harness import DaemonProc, open_files
from flood import held, tcp, unix

FLOOD = 2000
NOFILE = 1024


def status_times(d: DaemonProc, runs: int) -> tuple[list[float], list[float]]:
    """(socket round trips, `lmkeeperd status` wall times), in seconds."""
    socket_times, cli_times = [], []
    env = child_env({"LMKEEPERD_CONFIG": str(d.config_path)})
    for _ in range(runs):
        started = time.perf_counter()
        reply = d.request({"op": "status"}, timeout=30)
        assert reply["ok"], reply
        socket_times.append(time.perf_counter() - started)
    for _ in range(max(1, runs // 4)):
        started = time.perf_counter()
        subprocess.run(
            [PYTHON, "-m", "lmkeeperd", "status"], env=env, check=True, capture_output=True
        )
        cli_times.append(time.perf_counter() - started)
    return socket_times, cli_times


def one(emulator: EmulatorProcess, listener: str, count: int, runs: int) -> list[Figure]:
    d = make_daemon(emulator.url, proxy={"listen": "127.0.0.1:0"})
    try:
        d.start(env=child_env(), nofile=NOFILE)
        assert d.proc is not None
        port = int(str(d.status()["proxy"]["listen"]).rsplit(":", 1)[1])
        connect = tcp(port) if listener == "proxy" else unix(str(d.socket))
        quiet_socket, _ = status_times(d, runs)
        before = d.log_path.stat().st_size
        with held(connect, count, 120.0) as flood:
            fds = open_files(d.proc.pid)
            socket_times, cli_times = status_times(d, runs)
        grown = d.log_path.stat().st_size - before
        worst = max(*socket_times, *cli_times)
        return [
            emit(
                Figure(
                    "flood",
                    f"{listener}: status answer under {count} held connections (max)",
                    ms(worst),
                    "≤ 1 s",
                    worst <= 1.0,
                    f"socket median {ms(median(socket_times))} (quiet: "
                    f"{ms(median(quiet_socket))}), `lmkeeperd status` median "
                    f"{ms(median(cli_times))}; {flood.opened} opened, {flood.failed} failed, "
                    f"in {flood.seconds:.1f} s; daemon fds {fds}",
                )
            ),
            emit(
                Figure(
                    "flood",
                    f"{listener}: log growth under {count} held connections",
                    f"{grown / 1024:.1f} KiB",
                    "< 100 KB",
                    grown < 100 * 1024,
                    f"{len(d.events('connections_shed'))} connections_shed lines, "
                    f"{len(d.events('accept_failed'))} accept_failed lines",
                )
            ),
        ]
    finally:
        d.cleanup()


def run(quick: bool = False) -> list[Figure]:
    runs = 8 if quick else 20
    emulator = EmulatorProcess()
    try:
        listeners = ("proxy", "control")
        return [f for listener in listeners for f in one(emulator, listener, FLOOD, runs)]
    finally:
        emulator.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
