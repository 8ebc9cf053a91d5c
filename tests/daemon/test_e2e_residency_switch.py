"""L26, L27, L30 end to end: how a switch makes room, the real daemon and emulator.

Orders and overlaps are read from the emulator's request log (monotonic arrival `t` and
answer `t_done` of every request lmkeeperd sent). Rules: lifecycle-spec.md L26, L27, L30.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until
from residency_harness import (
    A,
    B,
    C,
    S,
    chat,
    instances_per_model,
    load_records,
    overlapping_loads,
    residency,
    select,
    unload_records,
    wait_residents,
)

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

Factory = Callable[..., DaemonProc]


@pytest.mark.parametrize("switch", ["make-before-break", "auto"])
def test_L26_make_before_break_old_model_serves_while_the_new_one_loads(
    daemon_factory: Factory, emulator: Emulator, switch: str
) -> None:
    # A (3.7 GB) and B (6.29 GB) fit a 12 GB budget together: `auto` makes before breaking.
    d = residency(daemon_factory, 1, budget="12GB", switch=switch)
    select(d, A)
    emulator.set_load_delay(3.0, model=B)  # room for 5 probes on a busy machine too
    assert d.request({"op": "select", "model": B}) == {"ok": True}
    emulator.wait_for_request("/api/v1/models/load", after=load_records(emulator, A)[0].t)
    answered = 0
    while not load_records(emulator, B)[0].t_done:
        if chat(emulator, A) != 200:
            # B may have landed between the check and this probe: then A may go (L26).
            landed = load_records(emulator, B)[0].t_done
            assert landed is not None, "the old model stopped answering during the new load"
            break
        answered += 1
        time.sleep(0.1)
    assert answered >= 5, f"only {answered} requests during a 3 s load"
    d.wait_status(state="loaded", model=B, timeout=15)
    wait_until(lambda: unloads_of(emulator) == [A], 10, "the old model unloaded afterwards")
    (load_b,) = load_records(emulator, B)
    (unload_a,) = unload_records(emulator, A)
    assert load_b.t_done is not None and unload_a.t >= load_b.t_done, "unloaded before B landed"
    wait_residents(d, [B])  # max_loaded = 1 again once the switch is done
    assert instances_per_model(emulator) == {B: 1}


def test_L26_auto_breaks_before_making_when_the_budget_is_too_small_for_both(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    # Each fits 8 GB alone; together (9.99 GB) they do not.
    d = residency(daemon_factory, 1, budget="8GB", switch="auto")
    select(d, A)
    emulator.set_load_delay(1.0, model=B)
    select(d, B)
    (unload_a,) = unload_records(emulator, A)
    (load_b,) = load_records(emulator, B)
    assert unload_a.t_done is not None and unload_a.t_done <= load_b.t, "B loaded beside A"
    assert instances_per_model(emulator) == {B: 1}
    wait_residents(d, [B])


def test_L27_guardrail_refusal_evicts_the_idle_one_and_the_retry_succeeds(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    # lmkeeperd thinks three fit (max_loaded 3, a roomy budget); LM Studio holds only two.
    d = residency(daemon_factory, 3)
    select(d, A)
    select(d, B)
    emulator.set_guardrail(max_models=2)
    select(d, C)
    wait_residents(d, [B, C])
    assert loads_of(emulator) == [A, B, C, C], "one refused load of C, then one retry"
    assert unloads_of(emulator) == [A], "the least recently used idle resident is evicted"
    first, retry = load_records(emulator, C)
    (unload_a,) = unload_records(emulator, A)
    assert first.status >= 400 and retry.status == 200
    assert first.t_done is not None and first.t_done <= unload_a.t
    assert unload_a.t_done is not None and unload_a.t_done <= retry.t
    refused = d.wait_event("load_refused", model=C)
    assert "insufficient system resources" in refused["message"]
    evicted = d.wait_event("evicted", model=A)
    assert evicted["reason"] == "refused by LM Studio" and evicted["for"] == C, evicted
    assert instances_per_model(emulator) == {B: 1, C: 1}


def test_L30_three_quick_selections_never_overlap_their_loads(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    d = daemon_factory(model={"idle_timeout": "30m"})
    emulator.set_load_delay(2.0)
    for model in (A, B, S):
        assert d.request({"op": "select", "model": model}) == {"ok": True}
        time.sleep(0.8)
        if model == B:  # A's load is in flight: B waits for it to land, and status says so
            why = d.status().get("why") or {}
            assert "cannot cancel a load" in str(why.get("waiting_for")), why
    d.wait_status(state="loaded", model=S, timeout=30)
    assert overlapping_loads(emulator) == [], load_records(emulator)
    assert loads_of(emulator)[-1] == S
    wait_until(lambda: set(emulator.loaded()) == {S}, 15, "only the last one left loaded")
    assert instances_per_model(emulator) == {S: 1}
