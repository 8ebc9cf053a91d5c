"""Socket request/reply round trips, one client (target: at least 5,000 per second).

One connection, one request at a time: send a line, wait for its reply, send the next. The
daemon has a model loaded (so the idle timer runs, as it does in real use). The target
figure is `activity`, the smallest request that goes through the lifecycle core; `status`
and `select` (which also writes the selection file) are printed beside it for context.

    .venv/bin/python bench/bench_roundtrip.py [--quick]
"""

from __future__ import annotations

import argparse
import time

from _harness import MODELS, Figure, emit, running

from lmkeeperd.control.client import ControlClient

TARGET = 5000.0


def rate(client: ControlClient, request: dict[str, str], n: int) -> float:
    for _ in range(min(500, n)):  # warm up: caches, allocator, branch predictors
        client.request(request)
    started = time.perf_counter()
    for _ in range(n):
        reply = client.request(request)
        if reply.get("ok") is not True:
            raise RuntimeError(f"{request} was refused: {reply}")
    return n / (time.perf_counter() - started)


def run(quick: bool = False) -> list[Figure]:
    n = 5000 if quick else 20000
    figures = []
    with running(model={"idle_timeout": "30m"}) as (_emulator, daemon):
        daemon.request({"op": "select", "model": MODELS[0]})
        daemon.wait_status(state="loaded", model=MODELS[0], timeout=30)
        with ControlClient(daemon.socket, timeout=10) as client:
            activity = rate(client, {"op": "activity"}, n)
            status = rate(client, {"op": "status"}, n // 4)
            select = rate(client, {"op": "select", "model": MODELS[0]}, n // 4)
    figures.append(
        emit(
            Figure(
                "roundtrip",
                "activity round trips, one client",
                f"{activity:,.0f}/s",
                "≥ 5,000/s",
                activity >= TARGET,
                f"{n:,} sequential requests on one connection, model loaded",
            )
        )
    )
    figures.append(emit(Figure("roundtrip", "status round trips, one client", f"{status:,.0f}/s")))
    figures.append(
        emit(
            Figure(
                "roundtrip",
                "select (same model) round trips, one client",
                f"{select:,.0f}/s",
                note="each select also writes the selection file",
            )
        )
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
