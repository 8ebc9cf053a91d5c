"""L22 end to end: nothing lmkeeperd started is left behind, whatever fails.

Real daemon processes against the emulator: a real `kill -9` during a load, loads that
outlast `load_timeout`, a stop during a load, hung unloads. In each, the server ends with
one instance of the selected model and nothing else of ours, and a model loaded by
somebody else (FOREIGN, loaded "in the GUI") is never touched (L18).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from daemon_harness import (
    STOP_MARGIN_S,
    DaemonProc,
    loads_of,
    model_listings,
    unloads_of,
    wait_until,
)

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "qwen/qwen2.5-0.5b-instruct"
FOREIGN = "google/gemma-3-12b"
LOAD = "/api/v1/models/load"
UNLOAD = "/api/v1/models/unload"
# Strays are found by the reconcile: every 0.2 s here (0.8 s while the channel watches).
QUICK = "200ms"


def server_holds(emulator: Emulator, expected: dict[str, list[str]], timeout: float = 20) -> None:
    wait_until(lambda: emulator.loaded() == expected, timeout, f"the server to hold {expected}")


def kill_during_load(d: DaemonProc, emulator: Emulator, model: str) -> None:
    """Select `model`, and `kill -9` the daemon once its load request reached the server."""
    d.request({"op": "select", "model": model})
    emulator.wait_for_request(LOAD, timeout=10)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait_exit() == -signal.SIGKILL


def test_kill_9_during_a_load_then_restart_waits_for_that_load_instead_of_a_second(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    foreign = emulator.load_behind(FOREIGN)
    d = daemon_factory()
    emulator.set_load_delay(3.0)
    kill_during_load(d, emulator, A)
    assert emulator.loaded() == {FOREIGN: [foreign]}  # still loading on the server
    d.start()  # the stored selection brings A back; the journal says its load is running
    d.wait_event("selection_restored", model=A)
    d.wait_event("load_awaited", model=A)
    st = d.wait_status(timeout=20, state="loaded", model=A)
    assert st["restored_selection"]["model"] == A
    assert st["restored_selection"]["file"].startswith(str(d.state_dir))
    assert loads_of(emulator) == [A]  # one load: the killed daemon's
    assert emulator.loaded() == {A: [A], FOREIGN: [foreign]}  # never `A` and `A:2`
    assert not st["adopted"]  # it was ours all along
    assert d.stop() == 0
    assert foreign not in unloads_of(emulator)


def test_kill_9_during_a_load_then_another_selection_collects_the_orphan(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    foreign = emulator.load_behind(FOREIGN)
    d = daemon_factory(server={"reconcile_interval": QUICK})
    emulator.set_load_delay(2.0, model=A)
    kill_during_load(d, emulator, A)
    d.tables["model"]["selected"] = B  # a config edit while it was down wins (no restore)
    d.write_config()
    d.start()
    d.wait_status(timeout=20, state="loaded", model=B)
    d.wait_event("stray_found", timeout=20, model=A, instance_id=A)
    server_holds(emulator, {B: [B], FOREIGN: [foreign]})
    assert foreign not in unloads_of(emulator)
    assert d.stop() == 0


def test_a_load_past_load_timeout_is_adopted_when_it_lands_not_loaded_twice(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # Abandoned at 1.5 s, the load may still land within another load_timeout: it does at 2.5 s.
    d = daemon_factory(server={"load_timeout": "1.5s"})
    emulator.set_load_delay(2.5)
    d.request({"op": "select", "model": A})
    d.wait_event("load_failed", timeout=10, model=A)
    assert d.status()["state"] == "idle"
    d.request({"op": "select", "model": A})  # the user tries again: no second load
    d.wait_event("load_awaited", timeout=10, model=A)
    d.wait_status(timeout=20, state="loaded", model=A)
    assert loads_of(emulator) == [A]
    assert emulator.loaded() == {A: [A]}
    assert d.stop() == 0


def test_a_load_past_load_timeout_lands_and_is_collected_after_a_switch(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(server={"load_timeout": "1.5s", "reconcile_interval": QUICK})
    emulator.set_load_delay(2.5, model=A)
    d.request({"op": "select", "model": A})
    d.wait_event("load_failed", timeout=10, model=A)
    d.request({"op": "select", "model": B})
    d.wait_status(timeout=10, state="loaded", model=B)
    d.wait_event("stray_found", timeout=20, model=A)  # it landed: ours, unwanted
    server_holds(emulator, {B: [B]})
    assert d.stop() == 0


def test_an_abandoned_load_landing_while_still_wanted_is_adopted(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        server={"load_timeout": "1.5s", "reconcile_interval": QUICK}, model={"idle_timeout": "1h"}
    )
    emulator.set_load_delay(2.5)  # past load_timeout, within the 2 × load_timeout it is awaited
    d.request({"op": "select", "model": A})
    d.wait_event("load_failed", timeout=10, model=A)
    d.wait_event("stray_adopted", timeout=20, model=A, instance_id=A)
    st = d.wait_status(state="loaded", model=A)
    assert st["idle_eject_in_s"] is not None  # not left loaded forever without a timer
    assert loads_of(emulator) == [A] and emulator.loaded() == {A: [A]}
    assert d.stop() == 0


def test_a_stop_during_a_load_beyond_the_bound_is_collected_by_the_next_start(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        server={"reconcile_interval": QUICK},
        model={"shutdown_timeout": "1s", "unload_on_exit": True, "selected": A},
    )
    emulator.set_load_delay(4.0, model=A)
    emulator.wait_for_request(LOAD, timeout=10)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=15) == 0
    elapsed = time.monotonic() - started  # from the signal to the exit: the stop bound holds
    assert elapsed < 1 + STOP_MARGIN_S, f"stopped in {elapsed:.2f} s against a 1 s bound"
    server_holds(emulator, {A: [A]})  # LM Studio finished the load nobody waits for
    d.tables["model"]["selected"] = B
    d.write_config()
    d.start()
    d.wait_event("stray_found", timeout=20, model=A, instance_id=A)
    d.wait_status(timeout=10, state="loaded", model=B)
    server_holds(emulator, {B: [B]})
    assert d.stop() == 0
    server_holds(emulator, {})  # unload_on_exit


def test_hung_unloads_and_switches_never_leave_our_models_behind(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    foreign = emulator.load_behind(FOREIGN)
    d = daemon_factory(server={"request_timeout": "1s"}, model={"switch": "break-before-make"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    emulator.hang_unloads(True)
    for model in (B, C):  # each switch's unload hangs, fails after 1 s; the load goes on (L4)
        d.request({"op": "select", "model": model})
        d.wait_status(timeout=15, state="loaded", model=model)
    assert set(emulator.loaded()) == {A, B, C, FOREIGN}  # while unloads hang
    # LM Studio drops the hung requests (a restart that keeps its models): nothing unloads
    # A or B but the reconcile's retry, from the journal.
    emulator.go_down()
    emulator.come_back(forget=False)
    emulator.hang_unloads(False)
    server_holds(emulator, {C: [C], FOREIGN: [foreign]})
    assert d.events("stray_found", model=A) and d.events("stray_found", model=B)
    assert foreign not in unloads_of(emulator)
    d.wait_status(state="loaded", model=C)
    assert d.stop() == 0


def test_kill_9_while_loaded_then_another_selection_unloads_what_we_held(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    foreign = emulator.load_behind(FOREIGN)
    d = daemon_factory()
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait_exit() == -signal.SIGKILL
    d.tables["model"]["selected"] = B
    d.write_config()
    d.start()
    d.wait_event("stray_found", timeout=20, model=A, instance_id=A)
    d.wait_status(timeout=10, state="loaded", model=B)
    server_holds(emulator, {B: [B], FOREIGN: [foreign]})
    assert d.stop() == 0
    server_holds(emulator, {FOREIGN: [foreign]})


def test_a_clean_stop_that_keeps_the_model_hands_it_over(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(server={"reconcile_interval": QUICK}, model={"unload_on_exit": False})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    assert d.stop() == 0
    assert emulator.loaded() == {A: [A]}  # kept on purpose: the user's now
    d.tables["model"]["selected"] = B
    d.write_config()
    d.start()
    d.wait_status(timeout=10, state="loaded", model=B)
    listings = model_listings(emulator)

    def looked() -> bool:  # status lists the server live (L29), as a reconcile would
        d.status()
        return model_listings(emulator) >= listings + 2

    wait_until(looked, 10, "two looks at the server")
    assert not d.events("stray_found")
    assert emulator.loaded() == {A: [A], B: [B]}
    assert d.stop() == 0
