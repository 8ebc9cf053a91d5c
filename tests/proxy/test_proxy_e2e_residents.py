"""L24 through the proxy, end to end: a request for a resident model passes straight
through (no switch, no load) and its stream counts for that model; select-on-request
still switches to a model that is not resident."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until
from test_proxy_e2e import Streamer, proxy_url

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "qwen/qwen2.5-0.5b-instruct"


def streams_of(d: DaemonProc) -> dict[str, int]:
    return {r["model"]: r["streams"] for r in d.status()["resident"]}


def test_L24_a_proxied_request_for_a_resident_passes_through_and_counts_for_it(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        proxy={"listen": "127.0.0.1:0", "select_on_request": True}, model={"max_loaded": 2}
    )
    for model in (A, B):
        d.request({"op": "select", "model": model})
        d.wait_status(model=model, state="loaded", timeout=15)
    wait_until(lambda: streams_of(d) == {A: 0, B: 0}, 10, "A and B resident")
    emulator.set_stream(0.05, 20)  # 1 s
    seen: list[dict[str, Any]] = []

    def on_event(n: int) -> None:
        if n == 5:
            status = d.status()
            seen.append({"selected": status["selected"], "streams": streams_of(d)})

    reader = Streamer(proxy_url(d), A, on_event)
    reader.run()
    assert reader.error is None and reader.status == 200
    # Mid-stream: still B selected and current, the stream counted for A.
    assert seen == [{"selected": B, "streams": {A: 1, B: 0}}]
    assert d.status()["model"] == B
    assert loads_of(emulator) == [A, B] and unloads_of(emulator) == []
    assert d.status()["proxy"]["waiting_for_switch"] == 0
    # A model that is not resident still switches (select_on_request keeps its meaning).
    reader = Streamer(proxy_url(d), C)
    reader.run()
    assert reader.error is None and reader.status == 200
    d.wait_status(model=C, state="loaded", timeout=15)
    assert loads_of(emulator) == [A, B, C]
