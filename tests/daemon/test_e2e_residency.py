"""L24, L25, L28 end to end: several models resident at once, the real daemon and emulator.

What lmkeeperd sent is read from the emulator's request log, what it holds from the
emulator's instances, what it says from `status`'s `"resident"` list. Rules:
/work/shared/docs/lifecycle-spec.md L24-L28; switching (L26, L27, L30) is in
test_e2e_residency_switch.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until
from direct_generation import DirectGeneration
from residency_harness import (
    LOAD,
    UNLOAD,
    A,
    B,
    C,
    E,
    after,
    generating,
    instances_per_model,
    residency,
    resident,
    select,
    since,
    wait_doing,
    wait_residents,
)

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

Factory = Callable[..., DaemonProc]


def test_L24_two_residents_and_reselection_loads_nothing(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    d = residency(daemon_factory, 2)
    select(d, A)
    select(d, B)
    both = wait_residents(d, [A, B])
    assert loads_of(emulator) == [A, B] and unloads_of(emulator) == []
    current = {r["model"]: r["current"] for r in both}
    assert current == {A: False, B: True}, both
    assert all(r["pinned"] is False and r["instance_id"] for r in both), both
    mark = since(emulator)
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    st = d.wait_status(model=A, state="loaded", timeout=5)
    assert {r["model"]: r["current"] for r in st["resident"]} == {A: True, B: False}
    assert after(emulator, mark, LOAD) == [] and after(emulator, mark, UNLOAD) == []
    assert instances_per_model(emulator) == {A: 1, B: 1}
    # Its last use is now: A is the most recently used of the two.
    a, b = resident(d, A), resident(d, B)
    assert a is not None and b is not None
    assert a["last_used_ago_s"] <= b["last_used_ago_s"], (a, b)


def test_L25_least_recently_used_idle_resident_is_evicted_at_max_loaded(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    d = residency(daemon_factory, 2)
    select(d, A)
    select(d, B)
    select(d, A)  # A used again: B is now the least recently used
    assert loads_of(emulator) == [A, B]
    select(d, C)
    wait_residents(d, [A, C])
    assert loads_of(emulator) == [A, B, C]
    # With room in the budget the switch makes before it breaks (L26): B goes after C landed.
    wait_until(lambda: unloads_of(emulator) == [B], 10, "B unloaded")
    assert unloads_of(emulator) == [B], "the least recently used idle one goes, and only it"
    assert instances_per_model(emulator) == {A: 1, C: 1}
    evicted = d.wait_event("evicted", model=B)
    assert evicted["reason"] == "max_loaded" and evicted["for"] == C, evicted


def test_L25_L19_a_model_generating_for_a_direct_client_is_never_evicted(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    d = residency(daemon_factory, 2, busy_switch_wait="60s")
    select(d, A)
    select(d, B)  # A is now the least recently used, but it will be busy for LM Studio
    d.wait_status(activity_source="lmstudio", timeout=15)
    emulator.set_stream(0.1, 100)  # 10 s
    generation = DirectGeneration(emulator, A)
    emulator.wait_until(lambda: generating(emulator, A), timeout=10)
    select(d, C)
    wait_residents(d, [A, C])
    wait_until(
        lambda: unloads_of(emulator) == [B], 10, "the idle one is evicted, never the generating one"
    )
    assert not generation.done, "the generation ended before the eviction: proves nothing"
    assert instances_per_model(emulator) == {A: 1, C: 1}
    wait_doing(d, A)  # and status says so
    generation.join()
    assert generation.done


def test_L28_pinned_model_loaded_at_start_kept_past_idle_and_after_a_restart(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    idle = 1.0
    d = residency(daemon_factory, 1, idle_timeout=f"{idle}s", pinned=[E])
    (pin,) = wait_residents(d, [E])
    assert pin["pinned"] is True and pin["idle_eject_in_s"] is None, pin
    assert loads_of(emulator) == [E]
    d.wait_event("pinned_loaded", model=E)
    # A selected model beside it: pinned models do not count against max_loaded = 1.
    select(d, A)
    wait_residents(d, [E, A])
    # A idles out; E stays, well past its idle timeout.
    wait_until(lambda: unloads_of(emulator) == [A], 10 + idle, "A ejected when idle")
    time.sleep(2 * idle)
    assert unloads_of(emulator) == [A] and E in emulator.loaded()
    wait_residents(d, [E])
    # LM Studio restarts (everything forgotten): the pinned model is loaded again.
    emulator.go_down()
    time.sleep(0.3)
    emulator.come_back(forget=True)
    wait_until(lambda: E in emulator.loaded(), 20, "the pinned model loaded again")
    assert loads_of(emulator) == [E, A, E]
    wait_residents(d, [E])
    assert instances_per_model(emulator) == {E: 1}


def test_L28_each_resident_has_its_own_idle_timer(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    idle = 1.5
    d = residency(daemon_factory, 2, idle_timeout=f"{idle}s")
    select(d, A)
    select(d, B)
    with d.client() as c:
        opened = c.request({"op": "stream_start", "model": A})
        assert opened["ok"] is True, opened
        # A is in use (a stream names it) though B is the current model: B idles out first.
        a = resident(d, A)
        assert a is not None and a["streams"] == 1 and a["idle_eject_in_s"] is None, a
        b = resident(d, B)
        assert b is not None and b["idle_eject_in_s"] is not None, b
        assert b["idle_eject_in_s"] <= idle, b
        wait_until(lambda: unloads_of(emulator) == [B], 10 + idle, "B ejected on its own timer")
        time.sleep(idle)
        assert unloads_of(emulator) == [B], "A was ejected while its stream was open"
        wait_residents(d, [A])
        ended = c.request({"op": "stream_end", "stream": opened["stream"]})
        assert ended == {"ok": True}
    ended_at = time.monotonic()
    wait_until(lambda: unloads_of(emulator) == [B, A], 10 + idle, "A ejected once idle")
    (unload_a,) = [
        r for r in emulator.requests() if r.path == UNLOAD and r.body["instance_id"] == A
    ]
    assert unload_a.t - ended_at >= idle - 0.3, "A's timer ran from its own last use"


def test_L22_L28_kill_9_with_two_residents_leaves_no_duplicate(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    d = residency(daemon_factory, 2)
    select(d, A)
    select(d, B)
    wait_residents(d, [A, B])
    d.signal(signal.SIGKILL)
    d.wait_exit()
    d.start()
    d.wait_status(state="loaded", model=B, timeout=15)
    assert all(n == 1 for n in instances_per_model(emulator).values()), emulator.loaded()
    # Both selected again: still one instance of each, and both resident.
    select(d, A)
    select(d, B)
    wait_residents(d, [A, B])
    assert instances_per_model(emulator) == {A: 1, B: 1}
    assert B not in loads_of(emulator)[2:], "the current model was loaded again"


def test_L28_restart_after_kill_9_adopts_the_journaled_residents(
    daemon_factory: Factory, emulator: Emulator
) -> None:
    d = residency(daemon_factory, 2)
    select(d, A)
    select(d, B)
    wait_residents(d, [A, B])
    d.signal(signal.SIGKILL)
    d.wait_exit()
    d.start()
    adopted = wait_residents(d, [A, B])
    assert unloads_of(emulator) == [] and loads_of(emulator) == [A, B]
    assert instances_per_model(emulator) == {A: 1, B: 1}
    # Their idle timers start anew (idle_timeout 30 min).
    assert all(r["idle_eject_in_s"] is None or r["idle_eject_in_s"] > 60 for r in adopted)
