"""cli/locate.py: the socket found leniently, and the same folders as platformdirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lmkeeperd import paths
from lmkeeperd.cli import locate

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the fast path is Linux's")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("LMKEEPERD_CONFIG", "RUNTIME_DIRECTORY", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@linux_only
def test_default_config_file_is_platformdirs_one(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert locate.config_file(None) == str(paths.config_path())
    monkeypatch.setenv("XDG_CONFIG_HOME", str(clean_env / "xdg"))
    assert locate.config_file(None) == str(paths.config_path())
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert locate.config_file(None) == str(paths.config_path())
    monkeypatch.setenv("LMKEEPERD_CONFIG", "~/c.toml")
    assert locate.config_file(None) == str(paths.config_path())
    assert locate.config_file("/x.toml") == str(paths.config_path("/x.toml")) == "/x.toml"
    assert locate.config_file("  ") == str(paths.config_path("  "))  # blank: as not given


@linux_only
def test_default_runtime_dir_is_platformdirs_one(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = clean_env / "run"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(private))
    assert locate._runtime_dir() == str(paths.runtime_dir())
    open_dir = clean_env / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)  # unsafe: platformdirs falls back, and so does the fast path
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(open_dir))
    assert not locate._private_dir(str(open_dir))
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{clean_env}/sd:{clean_env}/other")
    assert locate._runtime_dir() == str(paths.runtime_dir()) == f"{clean_env}/sd"


def test_socket_from_valid_toml_broken_toml_and_no_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[control]\nsocket = "~/my.sock"\n[model]\nselected = "x"\n')
    assert locate.socket_file(str(config)) == os.path.expanduser("~/my.sock")
    # A bad edit elsewhere: TOML refuses the file, the [control] line still counts.
    config.write_text("[model\nselected = 'x'\n[control]\nsocket = '/run/a.sock' # here\n")
    assert locate.configured_socket(str(config)) == "/run/a.sock"
    config.write_text('control.socket = "/run/dotted.sock"\n[x\n')
    assert locate.configured_socket(str(config)) == "/run/dotted.sock"
    config.write_text('[proxy]\nsocket = "/not/this.sock"\n[x\n')
    assert locate.configured_socket(str(config)) is None
    config.write_text('[model]\nselected = "x"\n')
    assert locate.configured_socket(str(config)) is None
    config.write_text('[control]\nsocket = ""\n')
    assert locate.configured_socket(str(config)) is None
    assert locate.configured_socket(str(tmp_path / "missing.toml")) is None
    assert locate.configured_socket(str(tmp_path)) is None  # a folder is not read
    config.write_bytes(b'[control]\nsocket = "\xff"\n')
    assert locate.configured_socket(str(config)) is None
