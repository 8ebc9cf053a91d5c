"""L23 end to end: selections the server's catalog does not list are refused first.

Real daemon, real CLI, the emulator as the server: a typo costs nothing (no unload, nothing
stored), from the socket or the config file; with the server away, a selection is accepted
and checked when it comes back.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
TYPO = "qwen/qwen3-4b"


def test_L23_a_typo_via_the_cli_exits_1_naming_the_nearest_and_costs_nothing(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory()
    assert d.cli("select", A).returncode == 0
    d.wait_status(state="loaded", model=A)
    done = d.cli("select", TYPO)
    assert done.returncode == 1, done
    assert TYPO in done.stderr and A in done.stderr and "did you mean" in done.stderr
    event = d.wait_event("selection_unknown", model=TYPO)
    assert event["level"] == "warning" and event["source"] == "socket" and A in event["nearest"]
    st = d.status()
    assert (st["state"], st["model"], st["selected"]) == ("loaded", A, A)
    assert unloads_of(emulator) == [] and loads_of(emulator) == [A]
    # Nothing was stored: a restart brings back A, not the typo.
    assert d.stop() == 0
    d.start()
    d.wait_status(state="loaded", model=A, selected=A)
    assert TYPO not in loads_of(emulator)


def test_L23_a_typo_in_the_config_file_is_reported_and_changes_nothing(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": A})
    d.wait_status(state="loaded", model=A)
    with d.subscribe() as events:
        d.tables["model"]["selected"] = TYPO
        d.write_config()
        event = events.wait_for("selection_unknown", model=TYPO)
        assert event["source"] == "config" and A in event["nearest"]
    st = d.status()
    assert (st["state"], st["model"], st["selected"]) == ("loaded", A, A)
    assert unloads_of(emulator) == [] and loads_of(emulator) == [A]


def test_L23_an_unknown_key_at_start_loads_nothing(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"selected": TYPO})
    assert d.wait_event("selection_unknown", model=TYPO)["source"] == "config"
    assert d.status()["state"] == "idle" and loads_of(emulator) == []


def test_L23_with_the_server_away_a_selection_is_accepted_and_checked_on_its_return(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        server={"reconcile_interval": "200ms"}, model={"switch": "break-before-make"}
    )  # outages seen, returns too
    assert d.cli("select", A).returncode == 0
    d.wait_status(state="loaded", model=A)
    emulator.go_down()
    # Until the daemon has seen the outage, a catalog listed a moment ago is still used.
    wait_until(lambda: d.status()["server"]["reachable"] is False, 15, "the outage seen")
    with d.subscribe() as events:
        done = d.cli("select", TYPO)
        assert done.returncode == 0 and "not checked" in done.stdout, done
        events.wait_for("selection_unchecked", model=TYPO)
        emulator.come_back(forget=False)
        event = events.wait_for("selection_unknown", model=TYPO, timeout=15)
        assert event["source"] == "socket"
        st = d.status()
        assert (st["model"], st["selected"]) == (A, A) and unloads_of(emulator) == []
        # A known key accepted the same way is loaded once the server answers again.
        emulator.go_down()
        wait_until(lambda: d.status()["server"]["reachable"] is False, 15, "the outage seen")
        mark = events.mark()
        done = d.cli("select", B)
        assert done.returncode == 0 and "not checked" in done.stdout, done
        events.wait_for("selection_unchecked", model=B, after=mark)
        emulator.come_back(forget=False)
        events.wait_for("load_finished", model=B, timeout=15)
    assert TYPO not in loads_of(emulator)
    assert set(emulator.loaded()) == {B}
