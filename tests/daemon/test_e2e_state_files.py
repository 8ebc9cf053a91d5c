"""State belongs to one daemon, and nothing found where it lives can wedge the daemon.

Real daemon processes: a FIFO and a 1 GiB sparse file at the selection path (the daemon
starts, answers, warns, and stops on SIGTERM), two daemons of one user with their own
config files and one state folder (neither inherits the other's selection), and the
restore being logged and shown in `status`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import pytest
from daemon_harness import DaemonProc

from lmkeeperd import paths
from lmkeeperd.daemon import selection
from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"


def selection_path(d: DaemonProc) -> os.PathLike[str]:
    key = paths.state_key(d.config_path)
    return d.state_dir / f"selection-{key}.json"


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_a_fifo_or_a_1_gib_file_at_the_selection_path_is_a_warning_not_a_wedge(
    daemon_factory: Callable[..., DaemonProc], kind: str
) -> None:
    d = daemon_factory(start=False)
    path = selection_path(d)
    d.state_dir.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
        expected = "a FIFO"
    else:
        with open(path, "wb") as f:
            f.truncate(1 << 30)  # sparse: 1 GiB without the disk
        expected = "1073741824 bytes"
    d.start()  # the socket answers: the read neither blocked nor read a GiB
    warning = d.wait_event("selection_store_unreadable")
    assert expected in warning["error"] and warning["level"] == "warning"
    started = time.monotonic()
    st = d.status()
    assert time.monotonic() - started < 5  # responsive (a wedged loop would never answer)
    assert st["selected"] is None and st["restored_selection"] is None
    assert d.stop() == 0  # and signal-able


def test_two_daemons_with_their_own_configs_do_not_share_a_selection(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    first = daemon_factory()
    shared = {"STATE_DIRECTORY": str(first.state_dir)}  # one user: one state folder
    first.stop()
    first.start(env=shared)
    first.request({"op": "select", "model": A})
    first.wait_status(state="loaded", model=A)
    assert first.stop() == 0

    second = daemon_factory(start=False)
    second.start(env=shared)
    st = second.status()
    assert st["selected"] is None and st["restored_selection"] is None
    assert not second.events("selection_restored")
    assert second.stop() == 0

    first.start(env=shared)  # its own selection comes back, and says so
    restored = first.wait_event("selection_restored", model=A)
    assert restored["file"] == str(selection_path(first))
    st = first.wait_status(state="loaded", model=A)
    assert st["restored_selection"] == {"model": A, "file": str(selection_path(first))}
    assert first.stop() == 0
    names = sorted(p.name for p in first.state_dir.iterdir())
    assert names == [f"selection-{paths.state_key(first.config_path)}.json"]  # no journal left


def test_the_old_per_user_selection_is_read_once_by_the_default_configs_daemon(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False)
    d.state_dir.mkdir(parents=True)
    legacy = d.state_dir / "selection.json"
    legacy.write_text(json.dumps({"model": B, "config_selected": ""}))
    other = daemon_factory(start=False)  # a daemon with another config never reads it
    other.start(env={"STATE_DIRECTORY": str(d.state_dir)})
    assert other.status()["selected"] is None
    assert other.stop() == 0
    d.start(env={"LMKEEPERD_CONFIG": str(d.config_path)})  # d's config is the default one
    restored = d.wait_event("selection_restored", model=B)
    assert restored["file"] == str(legacy)
    d.wait_status(selected=B)  # once checked against the server's catalog (L23)
    assert selection.load(selection_path(d)) == selection.StoredSelection(B, "")  # its own now
    assert d.stop() == 0
