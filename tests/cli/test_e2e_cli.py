"""The `lmkeeperd` command line as a subprocess: output and every exit code of interface.md."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"


def test_cli_exit_codes_0_1_2_3(daemon: DaemonProc, emulator: Emulator) -> None:
    assert daemon.cli("status").returncode == 0
    for blank in ("", "  "):
        empty = daemon.cli("select", blank)
        assert empty.returncode == 2 and "empty" in empty.stderr
    refused = daemon.cli("unload")
    assert refused.returncode == 1 and "nothing is loaded" in refused.stderr
    not_loaded = daemon.cli("unload", A)
    assert not_loaded.returncode == 1 and A in not_loaded.stderr
    selected = daemon.cli("select", A)
    assert selected.returncode == 0 and A in selected.stdout
    daemon.wait_status(state="loaded", model=A)
    with daemon.client() as c:
        c.request({"op": "stream_start"})
        streaming = daemon.cli("unload")
        assert streaming.returncode == 1 and "stream" in streaming.stderr
    unloaded = daemon.cli("unload")
    assert unloaded.returncode == 0, unloaded.stderr
    assert emulator.loaded() == {}
    usage = daemon.cli("select")  # the model argument is missing
    assert usage.returncode == 2
    assert daemon.stop() == 0
    for args in (("status",), ("status", "--json"), ("select", A), ("unload",)):
        gone = daemon.cli(*args)
        assert gone.returncode == 3, args
        assert "no lmkeeperd is running" in gone.stderr


def test_cli_status_table_and_json_match_the_socket(daemon: DaemonProc) -> None:
    daemon.request({"op": "select", "model": A})
    daemon.wait_status(state="loaded", model=A)
    table = daemon.cli("status")
    assert table.returncode == 0, table.stderr
    rows = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(r"^(state|model|selected|server)\s{2,}(.+)$", table.stdout, re.M)
    )
    assert rows.keys() == {"state", "model", "selected", "server"}, table.stdout
    assert rows["state"] == "loaded" and rows["model"].startswith(A) and rows["selected"] == A
    assert daemon.tables["server"]["url"] in rows["server"] and "reachable" in rows["server"]
    for config_arg in (("--config", str(daemon.config_path)), (f"--config={daemon.config_path}",)):
        # The option instead of $LMKEEPERD_CONFIG, in both spellings.
        by_option = daemon.cli("status", "--json", *config_arg, config_env=False)
        assert by_option.returncode == 0 and json.loads(by_option.stdout)["model"] == A
    as_json = daemon.cli("status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    socket_status = daemon.status()
    assert set(printed) == set(socket_status)
    assert printed["state"] == "loaded" and printed["model"] == A
    assert printed["pid"] == socket_status["pid"]


def test_config_check_valid_invalid_and_missing_file(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False, model={"selected": A, "idle_timeout": "10m"})
    valid = d.cli("config", "check")
    assert valid.returncode == 0 and "valid" in valid.stdout, valid.stderr
    d.tables["model"]["idle_timeout"] = "ten minutes"
    d.tables["model"]["colour"] = "blue"
    d.write_config()
    invalid = d.cli("config", "check", "--config", str(d.config_path))
    assert invalid.returncode == 2
    assert "model.idle_timeout" in invalid.stderr and "model.colour" in invalid.stderr
    assert re.search(r"line \d+", invalid.stderr)
    missing = d.cli("config", "check", "--config", str(d.dir / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    # The client finds the socket leniently (cli/locate.py): no daemon answers, so exit 3, and
    # a script (stderr not a terminal) is told which command checks the config; a person at
    # a terminal is told its problem (tests/cli/test_cli_tty.py).
    bad_config = d.cli("status")
    assert bad_config.returncode == 3 and "`lmkeeperd config check`" in bad_config.stderr


def test_run_with_an_invalid_config_exits_2_and_says_why(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False, model={"switch_debounce": "soon"})
    d.start(wait=False)
    assert d.wait_exit() == 2
    event = d.wait_event("config_invalid")
    assert "model.switch_debounce" in event["error"]
    assert not d.socket.exists()
