"""The CLI finds its daemon whatever the config file says (control/socket_record.py,
cli/locate.py), and says how it chose the socket when nothing answers. A real daemon on a
custom socket, the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, wait_until

from lmkeeperd.control import socket_record
from lmkeeperd.paths import state_key

pytestmark = pytest.mark.e2e


def _runtime(tmp_path: Path) -> dict[str, str]:
    """A private runtime folder of the test's own, for the daemon and the CLI alike."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700, exist_ok=True)
    return {"RUNTIME_DIRECTORY": str(folder)}


def _cli(d: DaemonProc, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`lmkeeperd ARGS` with no $LMKEEPERD_CONFIG: the test passes --config itself."""
    return subprocess.run(
        [sys.executable, "-m", "lmkeeperd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=d.env(env),
    )


def _break(path: Path, how: str) -> None:
    os.replace(path, path.with_suffix(".good"))
    if how == "empty":
        path.write_text("")
    elif how == "unparsable":  # broken before its [control] table
        good = path.with_suffix(".good").read_text()
        path.write_text("[server\n" + good)
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "folder":
        path.mkdir()
    # "missing": nothing at the path


def _mend(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    os.replace(path.with_suffix(".good"), path)


def test_the_record_is_private_keyed_by_the_config_and_removed_at_exit(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    env = _runtime(tmp_path)
    d = daemon_factory(start=False)
    d.start(env=env)
    record = Path(env["RUNTIME_DIRECTORY"]) / f"socket-{state_key(d.config_path)}.json"
    wait_until(record.exists, 10, "the socket record")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    body = json.loads(record.read_text())
    assert body["socket"] == str(d.socket) and body["pid"] == d.proc.pid  # type: ignore[union-attr]
    assert body["config"] == str(d.config_path.resolve())
    assert socket_record.config_key(str(d.config_path)) == state_key(d.config_path)
    assert d.stop() == 0
    assert not record.exists()


@pytest.mark.parametrize("how", ["empty", "unparsable", "fifo", "folder", "missing"])
def test_status_reaches_the_daemon_whatever_the_config_file_became(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path, how: str
) -> None:
    env = _runtime(tmp_path)
    d = daemon_factory(start=False)
    d.start(env=env)
    _break(d.config_path, how)
    wait_until(lambda: d.status()["config_error"], 10, f"config_error for a {how} file")
    done = _cli(d, env, "status", "--config", str(d.config_path))
    assert done.returncode == 0, done.stderr
    assert "CONFIG ERROR" in done.stdout, done.stdout
    as_json = _cli(d, env, "status", "--json", "--config", str(d.config_path))
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["config_error"]["file"] == str(d.config_path)
    if how == "fifo":  # a FIFO must not block the daemon's stop nor the mend
        d.config_path.unlink()
    _mend(d.config_path)
    d.wait_event("config_fixed")


def test_a_missing_config_path_is_said_as_such(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    env = _runtime(tmp_path)
    d = daemon_factory(start=False)
    d.start(env=env)
    typo = tmp_path / "confg.toml"
    done = _cli(d, env, "status", "--config", str(typo))
    assert done.returncode == 3
    assert f"no config file at {typo}; the daemon for it is not running" in done.stderr
    assert "no lmkeeperd is running" not in done.stderr
    also_env = _cli(d, {**env, "LMKEEPERD_CONFIG": str(typo)}, "select", "x")
    assert also_env.returncode == 3 and f"no config file at {typo}" in also_env.stderr


def test_no_socket_says_how_the_socket_was_chosen(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    env = _runtime(tmp_path)
    d = daemon_factory(start=False)  # never started: nothing listens
    done = _cli(d, env, "status", "--config", str(d.config_path))
    assert done.returncode == 3
    assert f"no socket at {d.socket}" in done.stderr
    assert f"[control] socket in {d.config_path} (--config)" in done.stderr
    assert "LMKEEPERD_CONFIG" in done.stderr
    d.config_path.write_text(f'[server]\nurl = "{d.tables["server"]["url"]}"\n')
    by_env = _cli(d, {**env, "LMKEEPERD_CONFIG": str(d.config_path)}, "status")
    assert by_env.returncode == 3
    assert "default place" in by_env.stderr and "$LMKEEPERD_CONFIG" in by_env.stderr


def test_a_record_left_by_a_killed_daemon_is_ignored(
    daemon_factory: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    env = _runtime(tmp_path)
    d = daemon_factory(start=False)
    d.start(env=env)
    record = Path(env["RUNTIME_DIRECTORY"]) / f"socket-{state_key(d.config_path)}.json"
    wait_until(record.exists, 10, "the socket record")
    d.proc.kill()  # type: ignore[union-attr]
    d.wait_exit()
    assert record.exists()  # a kill leaves it; its pid is gone
    d.config_path.unlink()
    done = _cli(d, env, "status", "--config", str(d.config_path))
    assert done.returncode == 3 and "no config file at" in done.stderr
