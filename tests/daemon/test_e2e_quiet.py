"""L29 end to end: look, don't poll. The real daemon, the real emulator, its request log.

What lmkeeperd sends LM Studio is counted from the emulator's own records: REST
requests (`requests()`) and channel frames (`frames()`). The test never asks the
daemon for `status` while counting: `status` asks LM Studio live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from daemon_harness import DaemonProc, loads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
QUIET_S = 8.0
CHAT = "/v1/chat/completions"


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


def unloads(emulator: Emulator) -> list[Any]:
    return [r for r in emulator.requests() if r.path == "/api/v1/models/unload"]


def chat(emulator: Emulator, *, stream: bool) -> Any:
    """A chat request straight to the emulator (not through lmkeeperd); its log record."""
    body = {"model": A, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(timeout=60, trust_env=False) as http:
        http.post(emulator.url + CHAT, json=body).raise_for_status()
    return [r for r in emulator.requests() if r.path == CHAT][-1]


def test_L29_a_generation_seen_only_at_the_idle_deadline_keeps_its_model(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # Nobody asks `status` during the generation: only the look at the idle deadline
    # can see it. It comes before the tick, so the eject is never even started.
    idle = 2.0
    d = daemon_factory(model={"idle_timeout": f"{idle}s"})
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(state="loaded", model=A, activity_source="lmstudio", timeout=15)
    emulator.set_stream(0.1, 50)  # 5 s: two idle timeouts and more
    record = chat(emulator, stream=True)
    assert unloads(emulator) == [], "unloaded during a generation"
    wait_until(lambda: unloads(emulator), 10 + idle, "the idle eject after the generation")
    (unload,) = unloads(emulator)
    assert unload.t - record.t_done >= idle - 0.2, (unload.t, record.t_done)
    assert d.events("unload_deferred") == [], "the look came before the eject"
    busy_looks = rpc_calls(emulator, record.t)
    assert 2 <= len(busy_looks) <= 20, busy_looks  # about once a second while busy


def test_L29_a_later_lastUsedTime_found_at_the_idle_deadline_rearms_the_timer(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    idle = 3.0
    d = daemon_factory(model={"idle_timeout": f"{idle}s"})
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(state="loaded", model=A, activity_source="lmstudio", timeout=15)
    time.sleep(idle / 2)
    record = chat(emulator, stream=False)  # quick: over long before the deadline
    wait_until(lambda: unloads(emulator), 10 + idle, "the idle eject")
    (unload,) = unloads(emulator)
    # L19: the timer runs from the later of ours and LM Studio's last use.
    assert unload.t - record.t_done >= idle - 0.2, (unload.t, record.t_done)
    assert d.events("unload_deferred") == []
