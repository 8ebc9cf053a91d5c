"""A burst of 10,000 `select` requests, rotating among 5 models, inside the debounce window.

Target: exactly 1 load request reaches the server, for the last model selected.

The selects go out on one connection, pipelined in batches of 500 lines (each batch's replies
are read before the next is sent, so neither side's socket buffer fills up). The debounce is
set long enough for the whole burst to fit in it (`switch_debounce = "20s"`); the burst's
duration is printed and checked against it, so a burst that overran the window would show.

    .venv/bin/python bench/bench_burst.py [--quick]     (--quick: 2,000 selects)
"""

from __future__ import annotations

import argparse
import time

from _harness import LOAD, MODELS, Figure, emit, running, wait_for

from lmkeeperd.control.client import ControlClient

DEBOUNCE_S = 20.0
BATCH = 500


def burst(client: ControlClient, n: int) -> tuple[str, float]:
    """Send `n` selects; returns (the last model selected, how long the burst took)."""
    last = ""
    started = time.monotonic()
    for first in range(0, n, BATCH):
        batch = range(first, min(n, first + BATCH))
        for i in batch:
            last = MODELS[i % len(MODELS)]
            client.send({"op": "select", "model": last})
        for _ in batch:
            reply = client.read_message()
            if reply != {"ok": True}:
                raise RuntimeError(f"a select was answered with {reply}")
    return last, time.monotonic() - started


def run(quick: bool = False) -> list[Figure]:
    n = 2000 if quick else 10000
    with running(model={"switch_debounce": f"{DEBOUNCE_S:g}s"}) as (emulator, daemon):
        with ControlClient(daemon.socket, timeout=30) as client:
            started = time.monotonic()
            last, took = burst(client, n)
        if took >= DEBOUNCE_S:
            raise RuntimeError(f"the burst took {took:.1f} s, longer than the debounce")
        daemon.wait_status(state="loaded", model=last, timeout=DEBOUNCE_S + 30)
        # Give a stray second load every chance to show up before counting.
        wait_for(lambda: time.monotonic() > started + DEBOUNCE_S + 2, DEBOUNCE_S + 10)
        loads = [r["body"]["model"] for r in emulator.requests(since=started) if r["path"] == LOAD]
    ok = loads == [last]
    return [
        emit(
            Figure(
                "burst",
                f"load requests after {n:,} selects among {len(MODELS)} models",
                f"{len(loads)} ({', '.join(loads) or 'none'})",
                "exactly 1, for the last model",
                ok,
                f"last selected {last}; burst took {took:.2f} s "
                f"({n / took:,.0f} selects/s) inside a {DEBOUNCE_S:g} s debounce",
            )
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
