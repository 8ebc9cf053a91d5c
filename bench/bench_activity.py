"""The daemon with LM Studio's activity channel wired in: its idle cost, and how soon
`status` shows a generation that bypasses lmkeeperd.

1. Idle cost: the daemon (default config) with a model loaded and nothing generating, for
   a window of `--seconds`, once with the emulator's channel on (L29: the channel stays
   open and silent, the REST reconcile is a 5-minute safety net) and once with it off
   (`clients only`: the REST reconcile every `reconcile_interval`). CPU per hour, wake-ups
   (context switches) per minute, RSS, channel RPCs and REST requests in the window.
   Targets with the channel on: CPU ≤ 1 s/h, ≤ 10 wake-ups/min, ≤ 2 requests per 5 min.
2. Detection lag: `--trials` streamed chat requests sent to the emulator directly (not
   through lmkeeperd), each started at a random moment; the lag is from sending the
   request to `status` showing `server_activity.doing == "generating"` (asked every
   10 ms; `status` asks LM Studio live, a look at most 1 s old serves a burst).
   Target p99 ≤ 1.5 s.

    .venv/bin/python bench/bench_activity.py [--quick] [--seconds S] [--trials N]
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psutil
from _harness import (
    MODELS,
    EmulatorProcess,
    Figure,
    child_env,
    emit,
    make_daemon,
    ms,
    percentile,
    wait_for,
)
from daemon_harness import DaemonProc

BENCH = "activity"
WINDOW_S = 120.0
SETTLE_S = 5.0
CPU_TARGET_S_PER_H = 1.0
WAKEUPS_TARGET_PER_MIN = 10.0
REQUESTS_TARGET_PER_5MIN = 2.0
LAG_TARGET_S = 1.5


@contextmanager
def _daemon(channel: bool) -> Iterator[tuple[EmulatorProcess, DaemonProc]]:
    emulator = EmulatorProcess("--stream-interval", "0.05")
    emulator.control("channel", {"on": channel})  # before the daemon's start-up probe
    daemon = make_daemon(emulator.url)
    try:
        daemon.start(env=child_env())
        daemon.request({"op": "select", "model": MODELS[0]})
        daemon.wait_status(state="loaded", model=MODELS[0], timeout=30)
        source = "lmstudio" if channel else "clients only"
        daemon.wait_status(activity_source=source, timeout=30)
        yield emulator, daemon
    finally:
        daemon.cleanup()
        emulator.stop()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _switches(proc: psutil.Process) -> int:
    ctx = proc.num_ctx_switches()
    return int(ctx.voluntary + ctx.involuntary)


def idle_cost(channel: bool, window: float) -> list[Figure]:
    with _daemon(channel) as (emulator, daemon):
        assert daemon.proc is not None
        proc = psutil.Process(daemon.proc.pid)
        time.sleep(SETTLE_S)  # past the load's after-effects and the status looks
        emulator.control("clear_frames")
        started = time.monotonic()
        cpu0, switches0 = _cpu(proc), _switches(proc)
        time.sleep(window)  # a benchmark's measuring window, not a synchronisation
        elapsed = time.monotonic() - started
        cpu, switches = _cpu(proc) - cpu0, _switches(proc) - switches0
        rss_mib = proc.memory_info().rss / 2**20
        frames = emulator._call("GET", "frames")["frames"]
        rpcs = sum(1 for f in frames if f.get("endpoint"))  # the auth frame names none
        rest = sum(1 for r in emulator.requests(since=started) if r["path"] != "/llm")
    per_hour = cpu * 3600 / elapsed
    wakeups = switches * 60 / elapsed
    requests = (rpcs + rest) * 300 / elapsed
    what = "channel on (lmstudio)" if channel else "channel off (clients only)"
    note = (
        f"{cpu * 1000:.0f} ms CPU in {elapsed:.0f} s; {rpcs} channel RPCs, {rest} REST "
        f"requests; RSS {rss_mib:.1f} MiB"
    )
    return [
        emit(
            Figure(
                BENCH,
                f"requests to LM Studio per 5 minutes, idle with a model loaded, {what}",
                f"{requests:.1f}",
                f"≤ {REQUESTS_TARGET_PER_5MIN:g}" if channel else "",
                requests <= REQUESTS_TARGET_PER_5MIN if channel else None,
                f"{rpcs} channel RPCs and {rest} REST requests in {elapsed:.0f} s",
            )
        ),
        emit(
            Figure(
                BENCH,
                f"daemon CPU per hour, idle with a model loaded, {what}",
                f"{per_hour:.2f} s/h",
                f"≤ {CPU_TARGET_S_PER_H:g} s/h" if channel else "",
                per_hour <= CPU_TARGET_S_PER_H if channel else None,
                note,
            )
        ),
        emit(
            Figure(
                BENCH,
                f"daemon wake-ups per minute, idle with a model loaded, {what}",
                f"{wakeups:.1f}/min",
                f"≤ {WAKEUPS_TARGET_PER_MIN:g}/min" if channel else "",
                wakeups <= WAKEUPS_TARGET_PER_MIN if channel else None,
                f"{switches} context switches in {elapsed:.0f} s",
            )
        ),
    ]


def _generate(url: str, done: threading.Event) -> None:
    body = {"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        with (
            httpx.Client(timeout=60, trust_env=False) as http,
            http.stream("POST", url + "/v1/chat/completions", json=body) as answer,
        ):
            for _ in answer.iter_lines():
                pass
    finally:
        done.set()


def _doing(daemon: DaemonProc) -> str | None:
    seen = daemon.status().get("server_activity") or {}
    doing = seen.get("doing")
    return None if doing is None else str(doing)


def detection_lag(trials: int) -> list[Figure]:
    lags: list[float] = []
    with _daemon(True) as (emulator, daemon):
        emulator.control("stream", {"interval": 0.05, "chunks": 30})  # 1.5 s generations
        wait_for(lambda: _doing(daemon) == "idle", 30, "the first look")
        for _ in range(trials):
            # Generations start at any moment, as real ones do (the status cache is 1 s).
            time.sleep(random.uniform(0.0, 1.0))
            done = threading.Event()
            sent = time.monotonic()
            threading.Thread(target=_generate, args=(emulator.url, done), daemon=True).start()
            wait_for(lambda: _doing(daemon) == "generating", 30, "status showing it busy")
            lags.append(time.monotonic() - sent)
            done.wait(30)
            wait_for(lambda: _doing(daemon) == "idle", 30, "status showing it idle")
    p99 = percentile(lags, 99)
    note = f"p50 {ms(percentile(lags, 50))}, max {ms(max(lags))}; {trials} generations"
    return [
        emit(
            Figure(
                BENCH,
                "detection lag, direct generation start -> status shows it busy, p99",
                ms(p99),
                f"≤ {LAG_TARGET_S:g} s",
                p99 <= LAG_TARGET_S,
                note,
            )
        )
    ]


def run(
    quick: bool = False, seconds: float | None = None, trials: int | None = None
) -> list[Figure]:
    window = seconds or (30.0 if quick else WINDOW_S)
    figures = idle_cost(True, window) + idle_cost(False, window)
    return figures + detection_lag(trials or (10 if quick else 50))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    run(args.quick, args.seconds, args.trials)
