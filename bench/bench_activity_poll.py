"""What the activity watcher costs, and how soon it sees a direct generation (issue 10).

The emulator runs as its own process; the `ActivityWatcher` runs here, with its default
intervals (listLoaded every 3 s, getInstanceProcessingState every 1 s), watching one
loaded instance. Not yet the daemon (the watcher is not wired in): these are the
watcher's own figures, the part the daemon will add.

1. Idle cost: `--seconds` with the instance idle. CPU of this process (the watcher, its
   loop, websockets) and of the emulator process, both per hour; frames per minute from
   the emulator's frame log; the same with nothing managed (no traffic expected).
2. Detection lag: `--trials` direct streaming requests to `/v1/chat/completions` (not
   through lmkeeperd); the lag is from sending the request to the watcher's callback
   reporting the instance busy. p50 / p99 (target p99 <= 1.5 s).

    .venv/bin/python bench/bench_activity_poll.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import httpx
import psutil
from _harness import EmulatorProcess, Figure, emit, ms, percentile

from lmkeeperd.lmstudio.activity import ActivityWatcher, InstanceState, Observation
from lmkeeperd.lmstudio.channel import LMStudioChannel

BENCH = "activity_poll"
MODEL = "qwen/qwen2.5-0.5b-instruct"


async def idle_cost(
    emu: EmulatorProcess, seconds: float, managed: bool, list_interval: float
) -> None:
    seen: list[Observation] = []
    watcher = ActivityWatcher(
        lambda: LMStudioChannel(base_url=emu.url), seen.append, list_interval=list_interval
    )
    watcher.start()
    await asyncio.sleep(2)  # past the start-up probe
    if managed:
        watcher.set_managed({MODEL})
        await asyncio.sleep(2)
    emu.control("clear_frames")
    server = psutil.Process(emu.proc.pid)
    cpu0, server0 = time.process_time(), sum(server.cpu_times()[:2])
    await asyncio.sleep(seconds)
    cpu, server_cpu = time.process_time() - cpu0, sum(server.cpu_times()[:2]) - server0
    frames = len(emu._call("GET", "frames")["frames"])
    await watcher.stop()
    what = "one instance managed, idle" if managed else "nothing managed"
    what += f", listLoaded every {list_interval:g} s"
    per_hour = 3600 / seconds
    emit(Figure(BENCH, f"watcher CPU ({what})", f"{cpu * per_hour:.2f} s/h"))
    emit(Figure(BENCH, f"emulator CPU ({what})", f"{server_cpu * per_hour:.2f} s/h"))
    emit(Figure(BENCH, f"frames per minute ({what})", f"{frames * 60 / seconds:.1f}"))


async def detection_lag(emu: EmulatorProcess, trials: int) -> None:
    busy = asyncio.Event()
    idle = asyncio.Event()

    def observe(observation: Observation) -> None:
        if isinstance(observation, InstanceState):
            (busy if observation.busy else idle).set()

    watcher = ActivityWatcher(lambda: LMStudioChannel(base_url=emu.url), observe)
    watcher.set_managed({MODEL})
    watcher.start()
    await asyncio.wait_for(idle.wait(), 30)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    lags: list[float] = []
    async with httpx.AsyncClient(timeout=60) as http:

        async def generate() -> None:
            async with http.stream("POST", emu.url + "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_lines():
                    pass

        for _ in range(trials):
            # Generations start at any point of the 1 s poll period, as real ones do.
            await asyncio.sleep(random.uniform(0.0, 1.0))
            busy.clear()
            idle.clear()
            sent = time.monotonic()
            task = asyncio.create_task(generate())
            await asyncio.wait_for(busy.wait(), 30)
            lags.append(time.monotonic() - sent)
            await task
            await asyncio.wait_for(idle.wait(), 30)
    await watcher.stop()
    p99 = percentile(lags, 99)
    emit(Figure(BENCH, f"detection lag p50 ({trials} generations)", ms(percentile(lags, 50))))
    emit(
        Figure(
            BENCH,
            f"detection lag p99 ({trials} generations)",
            ms(p99),
            target="p99 <= 1.5 s",
            ok=p99 <= 1.5,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--list-interval", type=float, default=3.0, metavar="SECONDS")
    args = parser.parse_args()
    seconds = args.seconds or (20.0 if args.quick else 120.0)
    trials = args.trials or (10 if args.quick else 40)
    # Each generation streams for ~1.6 s: longer than the 1 s state poll.
    emu = EmulatorProcess("--stream-interval", "0.08")
    try:
        emu.control("load_behind", {"key": MODEL})
        asyncio.run(idle_cost(emu, seconds, False, args.list_interval))
        asyncio.run(idle_cost(emu, seconds, True, args.list_interval))
        asyncio.run(detection_lag(emu, trials))
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
