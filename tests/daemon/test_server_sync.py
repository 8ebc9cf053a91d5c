"""The server view and the operations (lmkeeperd/daemon/server_view.py, operations.py) in
process: real core, real emulator."""

from __future__ import annotations

from pathlib import Path

from daemon_harness import loads_of
from inprocess_harness import inprocess_daemon, load, run, until

from lmkeeperd.core import Select, State
from lmkeeperd.emulator import Emulator

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"

# The keys of the `status` op (interface.md); the renderers read them.
STATUS_KEYS = {
    "state", "model", "selected", "pending", "engine", "active_streams", "idle_eject_in_s",
    "server", "memory", "last_error", "last_advisory", "pid", "version", "uptime_s",
    "adopted", "draft", "config", "subscribers", "dropped_events", "proxy", "metrics",
    "running", "why", "keep_alive_s", "config_error", "restored_selection", "activity_source",
    "activity_reason", "server_activity", "resident", "budget",
}  # fmt: skip


def test_a_selection_loads_through_the_server_and_status_shows_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            await load(d, A)
            (instance,) = emulator.loaded()[A]
            assert d.core.instance_id == instance and not d.core.adopted
            assert loads_of(emulator) == [A]
            status = d.status()
            assert set(status) == STATUS_KEYS
            assert status["state"] == "loaded" and status["model"] == A
            assert status["server"]["url"] == emulator.url
            assert status["server"]["loaded"] == []  # listed before the load, not since
            assert status["proxy"] is None and status["metrics"] is None
            assert await d.view.refresh() is None
            assert d.status()["server"]["loaded"] == [A]

    run(main())


def test_L17_an_instance_already_on_the_server_is_adopted_not_loaded_again(
    emulator: Emulator, tmp_path: Path
) -> None:
    instance = emulator.load_behind(A)

    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            await load(d, A)
            assert d.core.adopted and d.core.instance_id == instance
            assert loads_of(emulator) == []

    run(main())


def test_L6_a_model_the_server_lacks_fails_with_its_name_and_loads_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            d.feed(Select("no/such-model"))
            await until(lambda: d.core.last_error, "the failure")
            assert "'no/such-model'" in str(d.core.last_error)
            assert emulator.url in str(d.core.last_error)
            assert d.core.state is State.IDLE and loads_of(emulator) == []

    run(main())


def test_refresh_hands_the_core_what_was_loaded_behind_its_back(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            assert d.view.loaded == {}
            instance = emulator.load_behind(B)
            assert await d.view.refresh() is None
            assert d.view.loaded == {B: (instance,)}
            assert d.view.model_type(B) == "llm" and d.view.model_type("no/such") is None

    run(main())


def test_refresh_reports_an_unreachable_server(emulator: Emulator, tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            emulator.go_down()
            error = await d.view.refresh()
            assert error is not None and emulator.url in error

    run(main())


def test_the_reconcile_loop_announces_an_outage_and_the_return(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            d.spawn(d.view.reconcile_loop())
            await until(lambda: d.view.reachable is True, "the first listing")
            emulator.go_down()
            # The stop below cuts the loop's wait short; a load failing unreachable does too.
            d.feed(Select(A))
            await until(lambda: d.view.reachable is False, "the outage")
            assert d.view.error is not None
            emulator.come_back()
            await until(lambda: d.core.state is State.LOADED, "the load after the outage")
            assert d.view.reachable is True and d.view.error is None

    run(main())
