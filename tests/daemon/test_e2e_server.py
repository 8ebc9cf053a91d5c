"""The daemon against a misbehaving LM Studio: failures, outages, changes behind its back."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc, loads_of, model_listings, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "qwen/qwen2.5-0.5b-instruct"
HUGE = "deepseek/deepseek-v3-0324"  # about 378 GB: over any test machine's budget
TOKEN = "s3cret-token-value"
# Tests that wait for the daemon to look at the server again make it look more often.
FAST = {"reconcile_interval": "100ms"}  # 0.4 s while the channel watches our model


def wait_for_reconciles(daemon: DaemonProc, emulator: Emulator, n: int = 2) -> None:
    """Let the daemon look at the server `n` more times.

    With the channel open the REST reconcile is a 5-minute safety net (L29): `status`
    asks the server live (at most once a second), and what it learns feeds the core as
    a reconcile would.
    """
    target = model_listings(emulator) + n

    def looked() -> bool:
        daemon.status()
        return model_listings(emulator) >= target

    wait_until(looked, 10, f"{n} more reconciles")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_L23_a_model_the_server_does_not_list_is_refused_before_any_load(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    # Before L23 this selection was taken, and failed at the load (L6); now it never
    # reaches the core. tests/daemon/test_e2e_selection_check.py has the rest of L23.
    reply = daemon.request({"op": "select", "model": "nobody/no-such-model"})
    assert reply["ok"] is False and "nobody/no-such-model" in reply["error"]
    daemon.wait_event("selection_unknown", model="nobody/no-such-model")
    st = daemon.status()
    assert st["state"] == "idle" and st["selected"] is None and loads_of(emulator) == []


def test_L6_failed_load_returns_to_idle_and_selecting_again_retries(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    emulator.fail_next_loads(1, "out of memory")
    daemon.request({"op": "select", "model": A})
    failed = daemon.wait_event("load_failed", model=A)
    assert "out of memory" in failed["error"]
    st = daemon.wait_status(state="idle")
    assert st["model"] is None and "out of memory" in st["last_error"]
    assert st["selected"] == A and emulator.loaded() == {}
    daemon.request({"op": "select", "model": A})
    st = daemon.wait_status(state="loaded", model=A)
    assert st["last_error"] is None
    assert loads_of(emulator) == [A, A]


def test_L17_model_loaded_before_start_is_adopted_not_loaded_again(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    instance = emulator.load_behind(A)
    d = daemon_factory(server=FAST, model={"selected": A})
    st = d.wait_status(state="loaded", model=A)
    assert st["adopted"] is True
    d.request({"op": "select", "model": A})  # L2: selecting it again changes nothing
    wait_for_reconciles(d, emulator)
    assert loads_of(emulator) == []
    assert emulator.loaded() == {A: [instance]}
    assert d.status()["state"] == "loaded"


def test_L17_server_down_at_start_then_up_loads_the_selected_model(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.go_down()
    d = daemon_factory(model={"selected": A})
    d.wait_event("server_unreachable")
    st = d.wait_status(state="idle")
    assert st["server"]["reachable"] is False and st["selected"] == A
    emulator.come_back()
    d.wait_event("server_reachable")
    d.wait_status(state="loaded", model=A, timeout=10)
    assert loads_of(emulator) == [A] and emulator.loaded() == {A: [A]}


def test_L17_server_restart_mid_run_reloads_the_model(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    daemon = daemon_factory(server=FAST)
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    with daemon.subscribe() as events:
        # An outage that kept the model (LM Studio's server stopped, the app not quit).
        emulator.go_down()
        events.wait_for("server_unreachable")
        assert daemon.status()["server"]["reachable"] is False
        emulator.come_back(forget=False)
        events.wait_for("server_reachable")
        wait_for_reconciles(daemon, emulator)
        assert loads_of(emulator) == [A] and daemon.status()["state"] == "loaded"
        # A restart that forgot it: the model the user selected comes back.
        mark = events.mark()
        emulator.go_down()
        events.wait_for("server_unreachable", after=mark)
        emulator.come_back(forget=True)
        events.wait_for("server_reachable", after=mark)
        events.wait_for("load_finished", after=mark, model=A)
    daemon.wait_status(state="loaded", model=A)
    assert loads_of(emulator) == [A, A] and emulator.loaded() == {A: [A]}


def test_L18_model_unloaded_behind_the_daemons_back_is_followed_not_reloaded(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    daemon = daemon_factory(server=FAST)
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    emulator.unload_behind(emulator.loaded()[A][0])
    st = daemon.wait_status(state="idle", model=None, timeout=5)
    assert st["selected"] == A
    daemon.wait_event("model_vanished", model=A)
    wait_for_reconciles(daemon, emulator)
    assert loads_of(emulator) == [A] and emulator.loaded() == {}
    assert daemon.status()["state"] == "idle"


def test_L18_models_loaded_behind_its_back_survive_switch_and_idle_eject(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    foreign = emulator.load_behind(B)
    d = daemon_factory(model={"idle_timeout": "700ms"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    d.request({"op": "select", "model": C})
    d.wait_status(state="loaded", model=C)
    d.wait_event("unloaded", model=C, reason="idle")
    d.wait_status(state="idle")
    assert emulator.loaded() == {B: [foreign]}
    assert foreign not in unloads_of(emulator)
    assert d.events("unloaded", model=A)[0]["reason"] in ("switch", "idle")


def test_api_token_is_sent_and_never_shown(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.set_token(TOKEN)
    d = daemon_factory(env={"LM_API_TOKEN": TOKEN})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    expected = {"url": emulator.url, "reachable": True, "loaded": [A], "error": None}
    st = wait_until(
        lambda: (s := d.status())["server"].items() >= expected.items() and s, 10, "server"
    )
    requests = emulator.requests()
    assert requests and all(r.authorized for r in requests)
    shown = d.cli("status")
    shown_json = d.cli("status", "--json")
    assert shown.returncode == shown_json.returncode == 0
    d.request({"op": "unload"})
    assert d.stop() == 0
    for text in (d.log_text(), shown.stdout, shown_json.stdout, json.dumps(st)):
        assert TOKEN not in text


def test_wrong_token_is_reported_by_its_variable_never_by_its_value(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    wrong = "wrong-token-value-0123"
    emulator.set_token(TOKEN)
    d = daemon_factory(server=FAST, env={"LM_API_TOKEN": wrong})
    st = wait_until(lambda: (s := d.status())["server"]["reachable"] is False and s, 10)
    assert "LM_API_TOKEN" in st["server"]["error"]
    d.request({"op": "select", "model": A})
    failed = d.wait_event("load_failed", model=A)
    st = d.wait_status(state="idle")
    assert "LM_API_TOKEN" in failed["error"] and "LM_API_TOKEN" in st["last_error"]
    assert emulator.loaded() == {}
    for text in (d.log_text(), json.dumps(d.status()), d.cli("status").stdout):
        assert wrong not in text and TOKEN not in text


def test_L12_memory_advisory_for_a_model_over_budget_and_the_load_goes_ahead(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    with daemon.subscribe() as events:
        daemon.request({"op": "select", "model": HUGE})
        sent = events.wait_for("memory_advisory", model=HUGE)
        events.wait_for("load_finished", model=HUGE)
    logged = daemon.wait_event("memory_advisory", model=HUGE)
    assert logged["level"] == "warning"
    for advisory in (logged, sent):
        assert advisory["required_gb"] > advisory["budget_gb"] > 0
        assert advisory["total_gb"] >= advisory["budget_gb"]
    st = daemon.wait_status(state="loaded", model=HUGE)
    assert st["last_advisory"]["model"] == HUGE
    assert loads_of(emulator) == [HUGE]


def test_L5_a_newer_selection_supersedes_a_slow_load_and_its_stray_is_unloaded(
    daemon: DaemonProc, emulator: Emulator
) -> None:
    emulator.set_load_delay(1.0, model=A)
    daemon.request({"op": "select", "model": A})
    slow = emulator.wait_for_request("/api/v1/models/load")
    daemon.request({"op": "select", "model": B})
    daemon.wait_status(state="loaded", model=B)
    # A's load still lands on the server; lmkeeperd must not leave it there.
    emulator.wait_until(lambda: any(r.t == slow.t and r.status for r in emulator.requests()))
    emulator.wait_until(lambda: emulator.loaded() == {B: [B]}, timeout=10)
    assert A in unloads_of(emulator)
    assert daemon.status()["state"] == "loaded" and daemon.status()["model"] == B
    # The core's own rule unloaded A, knowing why; not L22's reconcile finding a stray
    # (which would log `stray_found` and an unload for reason "stray").
    unloaded = daemon.wait_event("unloaded", model=A)
    assert unloaded["reason"] not in ("stray", "command"), unloaded
    assert daemon.events("stray_found", model=A) == []
    assert [e["reason"] for e in daemon.events("unloaded", model=A)] == [unloaded["reason"]]


def test_L14_load_settings_from_the_config_go_with_every_load(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model_load={"context_length": 8192, "flash_attention": True})
    for model in (A, B):
        d.request({"op": "select", "model": model})
        d.wait_status(state="loaded", model=model)
    bodies = [r.body for r in emulator.requests() if r.path == "/api/v1/models/load"]
    assert [b["model"] for b in bodies] == [A, B]
    for body in bodies:
        assert body["context_length"] == 8192 and body["flash_attention"] is True


def test_L15_the_draft_model_follows_the_main_model(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(model={"draft_model": C, "switch": "break-before-make"})
    d.request({"op": "select", "model": A})
    wait_until(lambda: (s := d.status())["model"] == A and s["draft"] == C, what="A and C")
    assert set(emulator.loaded()) == {A, C}
    d.request({"op": "select", "model": B})
    wait_until(lambda: (s := d.status())["model"] == B and s["draft"] == C, what="B and C")
    assert set(emulator.loaded()) == {B, C}
    assert loads_of(emulator) == [A, C, B, C]
    assert d.stop() == 0
    assert emulator.loaded() == {}


def test_L11_a_failed_idle_eject_is_reported_and_the_state_still_returns_to_idle(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.hang_unloads(True)
    d = daemon_factory(server={"request_timeout": "500ms"}, model={"idle_timeout": "300ms"})
    with d.subscribe() as events:
        d.request({"op": "select", "model": A})
        failed = events.wait_for("unload_failed", model=A)
        assert failed["reason"] == "idle" and failed["error"]
    st = d.wait_status(state="idle", model=None)
    assert A in st["last_error"]
    assert d.wait_event("unload_failed", model=A)["level"] == "warning"


def test_an_lm_studio_older_than_0_4_is_named_in_status_and_log(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # The 0.3 mode answers /api/v1 as real 0.3.x does: HTTP 200 with an `error` body.
    emulator.set_v0_only(True)
    d = daemon_factory(server=FAST)
    st = wait_until(lambda: (s := d.status())["server"]["error"] and s, 10, "a server error")
    assert "LM Studio 0.4 or newer is needed" in st["server"]["error"]
    assert st["server"]["reachable"] is False
    d.request({"op": "select", "model": A})
    failed = d.wait_event("load_failed", model=A)
    assert "LM Studio 0.4 or newer is needed" in failed["error"]
    assert emulator.loaded() == {}
    assert "LM Studio 0.4 or newer is needed" in d.log_text()


def test_an_unload_answered_with_an_error_body_is_never_reported_done(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory()
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    emulator.set_v0_only(True)  # now every v1 call gets 200 "Unexpected endpoint or method"
    d.request({"op": "unload"})
    failed = d.wait_event("unload_failed", model=A)
    assert "LM Studio 0.4 or newer is needed" in failed["error"]
    assert emulator.loaded() == {A: [A]}
    assert not d.events("unloaded", model=A)
