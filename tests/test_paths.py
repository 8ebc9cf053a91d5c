"""Where lmkeeperd's files live: precedence of flags, environment and platform folders."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from lmkeeperd import paths
from lmkeeperd.config import Config, ControlConfig


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LMKEEPERD_CONFIG", "RUNTIME_DIRECTORY", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def test_config_flag_beats_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMKEEPERD_CONFIG", str(tmp_path / "from-env.toml"))
    assert paths.config_path(tmp_path / "flag.toml") == tmp_path / "flag.toml"
    assert paths.config_path(str(tmp_path / "flag.toml")) == tmp_path / "flag.toml"


def test_config_environment_beats_platform_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LMKEEPERD_CONFIG", str(tmp_path / "from-env.toml"))
    assert paths.config_path() == tmp_path / "from-env.toml"
    assert paths.config_path("") == tmp_path / "from-env.toml"


def test_config_paths_expand_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.config_path("~/lmk.toml") == tmp_path / "lmk.toml"
    monkeypatch.setenv("LMKEEPERD_CONFIG", "~/env.toml")
    assert paths.config_path() == tmp_path / "env.toml"


def test_config_defaults_to_platform_config_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LMKEEPERD_CONFIG", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    expected = platformdirs.user_config_path("lmkeeperd") / "config.toml"
    assert paths.config_path() == expected
    if sys.platform.startswith("linux"):
        assert expected == tmp_path / "xdg" / "lmkeeperd" / "config.toml"


def test_runtime_dir_prefers_systemds_first_runtime_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path}/lmkeeperd:{tmp_path}/other")
    assert paths.runtime_dir() == tmp_path / "lmkeeperd"


def test_runtime_dir_falls_back_to_platformdirs_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A world-readable XDG_RUNTIME_DIR makes platformdirs >= 4.14 warn (once per
    # message, so the path makes it new) and fall back; under filterwarnings=error
    # an unsilenced warning fails this test.
    unsafe = tmp_path / "unsafe-runtime"
    unsafe.mkdir(mode=0o755)
    unsafe.chmod(0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(unsafe))
    found = paths.runtime_dir()
    assert found.name == "lmkeeperd"
    assert found.parent != unsafe


def test_state_dir_prefers_systemds_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert paths.state_dir() == tmp_path / "state"
    config = tmp_path / "config.toml"
    key = paths.state_key(config)
    assert paths.selection_file(config) == tmp_path / "state" / f"selection-{key}.json"
    assert paths.journal_file(config) == tmp_path / "state" / f"journal-{key}.json"
    assert paths.legacy_selection_file() == tmp_path / "state" / "selection.json"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert paths.state_dir() == platformdirs.user_state_path("lmkeeperd")


def test_socket_path_from_config_or_runtime_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    assert paths.socket_path(Config()) == tmp_path / "run" / "lmkeeperd.sock"
    configured = Config(control=ControlConfig(socket=str(tmp_path / "my.sock")))
    assert paths.socket_path(configured) == tmp_path / "my.sock"


def test_nothing_is_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    paths.config_path()
    paths.socket_path(Config())
    paths.selection_file(tmp_path / "c.toml")
    paths.journal_file(tmp_path / "c.toml")
    assert list(tmp_path.iterdir()) == []


def test_state_belongs_to_one_config_file(tmp_path: Path) -> None:
    # Two daemons of one user with their own config files never share state files.
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    assert paths.state_key(one) != paths.state_key(two)
    assert paths.selection_file(one) != paths.selection_file(two)
    # The same file named another way is the same daemon's.
    assert paths.state_key(tmp_path / "x" / ".." / "one.toml") == paths.state_key(one)
    assert len(paths.state_key(one)) == 12
