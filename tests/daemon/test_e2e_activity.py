"""L19-L21 end to end: the real daemon, the real emulator, and clients that talk to
LM Studio (the emulator) directly, bypassing lmkeeperd's socket and proxy.

Generations are held open with the emulator's stream pacing (`set_stream`); every
wait is a condition with a deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from daemon_harness import DaemonProc, unloads_of, wait_until
from direct_generation import CHAT, DirectGeneration

from lmkeeperd.cli.render import render
from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"


def chat_record(emulator: Emulator) -> Any:
    records = [r for r in emulator.requests() if r.path == CHAT]
    assert len(records) == 1, records
    return records[0]


def unload_records(emulator: Emulator) -> list[Any]:
    return [r for r in emulator.requests() if r.path == "/api/v1/models/unload"]


def seen_generating(d: DaemonProc) -> dict[str, Any]:
    """Status once the daemon shows what LM Studio says: our model generating."""

    def check() -> dict[str, Any] | None:
        st = d.status()
        seen = st.get("server_activity") or {}
        ok = st["state"] == "streaming" and seen.get("doing") == "generating"
        return st if ok else None

    result: dict[str, Any] = wait_until(check, 15, "status showing the model generating")
    return result


def load(d: DaemonProc, model: str) -> None:
    assert d.request({"op": "select", "model": model}) == {"ok": True}
    d.wait_status(state="loaded", model=model, timeout=15)
    d.wait_status(activity_source="lmstudio", timeout=15)


def quiet(emulator: Emulator, seconds: float) -> bool:
    """No channel frame for `seconds` (more than two poll periods of the watcher)."""
    count = len(emulator.frames())
    try:
        emulator.wait_until(lambda: len(emulator.frames()) > count, timeout=seconds)
    except TimeoutError:
        return True
    return False


def test_L19_direct_generation_keeps_its_model_then_idle_eject(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    idle = 2.0
    d = daemon_factory(model={"idle_timeout": f"{idle}s"})
    d.wait_status(activity_source="lmstudio", activity_reason=None, timeout=15)
    assert quiet(emulator, 2.5), "nothing of ours is loaded: the watcher must send nothing"
    load(d, A)
    emulator.set_stream(0.1, 50)  # 5 s: two and a half idle timeouts
    generation = DirectGeneration(emulator, A)
    st = seen_generating(d)
    assert st["active_streams"] == 0 and st["idle_eject_in_s"] is None
    assert st["why"]["server_busy"].startswith("generating")
    assert "lmstudio: generating" in render(st)  # type: ignore[arg-type]
    generation.join()
    assert generation.error is None and generation.done and generation.chunks == 50
    assert unloads_of(emulator) == [], "unloaded during a generation it could see"
    ended = chat_record(emulator).t_done
    d.wait_status(state="idle", model=None, timeout=10 + idle)
    (unload,) = unload_records(emulator)
    # Counted from the generation's end (the daemon learns it up to a poll later).
    assert unload.t - ended >= idle - 0.2, (unload.t, ended)
    assert quiet(emulator, 2.5), "nothing of ours is loaded any more: no channel traffic"


def test_L20_switch_waits_for_a_direct_generation(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"idle_timeout": "0", "switch": "break-before-make"})
    load(d, A)
    emulator.set_stream(0.1, 40)
    generation = DirectGeneration(emulator, A)
    seen_generating(d)
    assert d.request({"op": "select", "model": B}) == {"ok": True}
    st = d.wait_status(pending=B)
    assert st["state"] == "streaming" and st["why"]["waiting_for"].startswith("server busy")
    generation.join()
    assert generation.done and unloads_of(emulator) == []
    d.wait_status(state="loaded", model=B, timeout=15)
    (unload,) = unload_records(emulator)
    assert unload.body["instance_id"] == A and unload.t >= chat_record(emulator).t_done
    assert d.events("switch_forced") == []


def test_L20_switch_is_forced_after_busy_switch_wait(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        model={"idle_timeout": "0", "busy_switch_wait": "1s", "switch": "break-before-make"}
    )
    load(d, A)
    emulator.set_stream(0.1, 300)  # 30 s: far longer than the wait
    generation = DirectGeneration(emulator, A)
    seen_generating(d)
    assert d.request({"op": "select", "model": B}) == {"ok": True}
    forced = d.wait_event("switch_forced", timeout=15, model=A)
    assert forced["level"] == "warning" and forced["instance_id"] == A
    assert forced["doing"].startswith("generating") and forced["waited_s"] >= 1.0
    d.wait_status(state="loaded", model=B, timeout=15)
    assert unloads_of(emulator) == [A]
    assert not generation.done, "forced while the generation was still running"


def test_L21_channel_off_works_as_before_and_warns_once(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.set_channel(False)
    d = daemon_factory(model={"idle_timeout": "1s"})
    st = d.wait_status(activity_source="clients only", activity_reason="older server")
    assert st["server_activity"] is None
    assert "clients only (older server)" in render(st)  # type: ignore[arg-type]
    # As before the channel: a socket stream holds the model, idle eject follows.
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(state="loaded", model=A, timeout=15)
    with d.client() as c:
        stream = c.request({"op": "stream_start"})["stream"]
        d.wait_status(state="streaming")
        assert c.request({"op": "stream_end", "stream": stream}) == {"ok": True}
    d.wait_status(state="idle", model=None, timeout=10)
    assert unloads_of(emulator) == [A]
    # Loaded and unloaded again: the watcher tried the channel again, same verdict.
    load_again = d.request({"op": "select", "model": B})
    assert load_again == {"ok": True}
    wait_until(lambda: unloads_of(emulator) == [A, B], 15, "B loaded and ejected")
    blind = d.events("activity_blind")
    assert len(blind) == 1, blind
    assert blind[0]["level"] == "warning" and blind[0]["reason"] == "older server"
    assert "0.3.27" in blind[0]["advice"] and "proxy" in blind[0]["advice"]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("refuse_channel_auth", "auth refused"), ("set_channel_rpc_missing", "rpc missing")],
)
def test_L21_refused_or_older_channel_is_clients_only_with_the_reason(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator, fault: str, reason: str
) -> None:
    getattr(emulator, fault)(True)
    d = daemon_factory(model={"idle_timeout": "30m"})
    d.wait_status(activity_source="clients only", activity_reason=reason, timeout=15)
    changed = d.wait_event("activity_source_changed", source="clients only")
    assert changed["reason"] == reason
    assert d.wait_event("activity_blind")["reason"] == reason
    # The channel comes good: the next connection (made while a model is ours) says so.
    getattr(emulator, fault)(False)
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(activity_source="lmstudio", activity_reason=None, timeout=15)


def test_L21_emulator_down_and_up_the_watcher_reconnects(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"idle_timeout": "0"})
    load(d, A)
    emulator.go_down()
    d.wait_status(activity_source="clients only", activity_reason="unreachable", timeout=15)
    # A restart quicker than the REST reconcile's look: the channel saw the server go, so
    # the daemon counts it as an outage and loads A again (L17), not as A unloaded by hand.
    emulator.come_back()
    d.wait_status(activity_source="lmstudio", state="loaded", model=A, timeout=30)
    # And it reads activity again on the new connection.
    emulator.set_stream(0.05, 40)
    generation = DirectGeneration(emulator, A)
    seen_generating(d)
    generation.join()
