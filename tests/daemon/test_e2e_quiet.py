"""L29 end to end: look, don't poll. The real daemon, the real emulator, its request log.

What lmkeeperd sends LM Studio is counted from the emulator's own records: REST
requests (`requests()`) and channel frames (`frames()`). The test never asks the
daemon for `status` while counting: `status` asks LM Studio live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from daemon_harness import DaemonProc, loads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
QUIET_S = 8.0


def rpc_calls(emulator: Emulator, since: float) -> list[str]:
    """Channel RPCs (the auth frame names no endpoint) that arrived after `since`."""
    return [f.endpoint for f in emulator.frames() if f.endpoint and f.t > since]


def rest_requests(emulator: Emulator, since: float) -> list[str]:
    return [f"{r.method} {r.path}" for r in emulator.requests() if r.t > since and r.path != "/llm"]


def rest_tries(events: list[dict[str, Any]]) -> list[str]:
    """The REST requests the daemon logged (answered or failed) among `events`."""
    names = ("lmstudio_request", "lmstudio_request_failed")
    return [f"{e['method']} {e['path']}" for e in events if e["event"] in names]


def test_L29_a_quiet_daemon_with_a_model_loaded_sends_nothing(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # A REST reconcile every second would be 8 listings in the window; while the channel
    # is open it is a 5-minute safety net. Idle eject far away: no decision is due.
    d = daemon_factory(server={"reconcile_interval": "1s"}, model={"idle_timeout": "30m"})
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(state="loaded", model=A, activity_source="lmstudio", timeout=15)
    time.sleep(1.5)  # the status answers above (live looks) and the load's own traffic end
    since = time.monotonic()
    time.sleep(QUIET_S)
    assert rpc_calls(emulator, since) == [], "channel RPCs with nothing to decide"
    assert rest_requests(emulator, since) == [], "REST requests with nothing to decide"
    assert emulator.loaded() == {A: [A]}
    # Asked, it looks: `status` lists the server and reads the activity live.
    mark = time.monotonic()
    st = d.status()
    assert st["server"]["loaded"] == [A] and st["server_activity"] is not None
    assert rpc_calls(emulator, mark) and rest_requests(emulator, mark) == ["GET /api/v1/models"]


def test_L29_LM_Studio_restarts_empty_and_the_selection_is_back_within_2s(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # A REST reconcile every 60 s: a quick return can only be the channel's doing.
    d = daemon_factory(server={"reconcile_interval": "60s"}, model={"idle_timeout": "0"})
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(state="loaded", model=A, activity_source="lmstudio", timeout=15)
    time.sleep(1.5)  # past the last status look
    emulator.go_down()
    d.wait_event("activity_source_changed", source="clients only", timeout=10)
    time.sleep(0.5)  # the one look the channel's closing asks for
    during = len(d.log_events())
    time.sleep(3.0)  # down for a while: anything polling would show in the daemon's log
    tried = rest_tries(d.log_events()[during:])
    back = time.monotonic()
    emulator.come_back(forget=True)  # LM Studio restarted: nothing loaded
    wait_until(lambda: emulator.loaded() == {A: [A]}, 10, "the selection loaded again")
    (load,) = [r for r in emulator.requests() if r.path == "/api/v1/models/load" and r.t > back]
    assert load.t - back < 2.0, f"loaded {load.t - back:.2f} s after LM Studio came back"
    # While it was down the daemon did not poll the REST API: it waited for the channel.
    assert tried == [], tried
    assert loads_of(emulator) == [A, A]
    d.wait_status(state="loaded", model=A, activity_source="lmstudio", timeout=10)
