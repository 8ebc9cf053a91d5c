"""`service install` warns when the service's config file is under a temporary folder (the
demo exports its temporary config as $LMKEEPERD_CONFIG in its shell)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lmkeeperd.service.target import temporary_folder


def _dry_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmkeeperd", "service", "install", "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_a_config_from_the_demo_shell_is_warned_about(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(tmp_path / "home"), LMKEEPERD_CONFIG=str(tmp_path / "demo" / "c.toml"))
    done = _dry_run(env, "--platform", "linux")
    assert done.returncode == 0, done.stderr
    assert "lmkeeperd: warning: the service's config file" in done.stderr
    assert "($LMKEEPERD_CONFIG) is under the temporary folder" in done.stderr
    assert "unset LMKEEPERD_CONFIG" in done.stderr
    named = _dry_run(env, "--platform", "linux", "--config", str(tmp_path / "c.toml"))
    assert "(--config) is under the temporary folder" in named.stderr
    env.pop("LMKEEPERD_CONFIG")
    lasting = _dry_run(env, "--platform", "linux")  # the default file: not named, not warned
    assert lasting.returncode == 0 and "temporary folder" not in lasting.stderr, lasting.stderr


def test_temporary_folders(tmp_path: Path) -> None:
    assert temporary_folder(Path("/tmp/x/config.toml")) is not None
    assert temporary_folder(Path("/var/tmp/config.toml")) == Path("/var/tmp").resolve()
    assert temporary_folder(Path("/etc/lmkeeperd/config.toml")) is None
    assert temporary_folder(Path("/tmpfoo/config.toml")) is None  # a prefix is not a folder
