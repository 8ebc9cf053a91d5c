"""Config file edit → selection applied (target: p99 ≤ 1 s), 50 trials.

Each trial starts from `idle`. The benchmark rewrites the config file as editors save
(a temporary file renamed over it) with a new `[model] selected`, and measures from the
rename to (a) the daemon's status showing the new selection and (b) the load request for it
arriving at the server. (b) is the figure: a selection is applied when its load is on its
way. `switch_debounce` is 0, so the figure is the file watcher's and the reload's own time.
The daemon's file watcher waits 50 ms after the first event for more (an editor's
write-and-rename burst), which is part of the figure.

    .venv/bin/python bench/bench_config_edit.py [--quick]     (--quick: 15 trials)
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from _harness import LOAD, MODELS, Figure, emit, ms, percentile, running, wait_for

TARGET_S = 1.0


def run(quick: bool = False) -> list[Figure]:
    n = 15 if quick else 50
    applied: list[float] = []
    shown: list[float] = []
    with running(model={"switch_debounce": "0ms"}) as (emulator, daemon):

        def selected_at(model: str) -> float | None:
            """When status was seen showing `model` as selected (None: not yet)."""
            return time.monotonic() if daemon.status()["selected"] == model else None

        for i in range(n + 2):  # two warm-up trials
            model = MODELS[i % len(MODELS)]
            daemon.tables["model"]["selected"] = model
            edited = time.monotonic()
            daemon.write_config()
            seen: float = wait_for(partial(selected_at, model), 30, "the selection in status")
            load = emulator.wait_request(LOAD, after=edited, timeout=30)
            if load["body"]["model"] != model:
                raise RuntimeError(f"loaded {load['body']} after selecting {model}")
            if i >= 2:
                applied.append(load["t"] - edited)
                shown.append(seen - edited)
            daemon.wait_status(state="loaded", model=model, timeout=30)
            reply = daemon.request({"op": "unload"})
            if reply != {"ok": True}:
                raise RuntimeError(f"unload refused: {reply}")
            daemon.wait_status(state="idle", timeout=30)
    p99 = percentile(applied, 99)
    return [
        emit(
            Figure(
                "config_edit",
                "config edit → load request of the new selection, p99",
                ms(p99),
                "≤ 1 s",
                p99 <= TARGET_S,
                f"{n} trials; p50 {ms(percentile(applied, 50))}, max {ms(max(applied))}; "
                f"edit → status shows it: p50 {ms(percentile(shown, 50))}, "
                f"p99 {ms(percentile(shown, 99))}",
            )
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
