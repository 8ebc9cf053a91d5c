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


PLAIN = (
    '# lmkeeperd\n[server]\nurl = "http://127.0.0.1:1234"  # LM Studio\nreconcile_interval = 15\n'
    '\n[model]\nselected = "qwen/qwen3-4b-2507"\nidle_timeout = "30m"\n[model.load]\n'
    "context_length = 8192\nflash_attention = true\n\n[control]\nsocket = '/run/x/a.sock' # ok\n"
    '[proxy]\nlisten = "127.0.0.1:1235"\n'
)


@pytest.mark.parametrize(
    "text",
    [
        PLAIN,
        PLAIN.replace("[control]\nsocket = '/run/x/a.sock' # ok\n", ""),
        'control.socket = "/run/dotted.sock"\n[model]\nselected = "x"\n',
        '[control]\nsocket = "/run/a.sock"\n[[servers]]\nsocket = "/not/this.sock"\n',
        '[proxy]\nsocket = "/not/this.sock"\n[control]\n',
        '[control]\nsocket = ""\n',
        '[model]\nload = { context_length = 4096 }\n[control]\nsocket = "/run/b.sock"\n',
    ],
)
def test_a_plain_file_is_read_without_the_toml_parser_as_toml_reads_it(text: str) -> None:
    import tomllib

    plain, value = locate._plain_socket(text)
    assert plain, text
    control = tomllib.loads(text).get("control", {})
    expected = control.get("socket") or None
    assert value == expected


@pytest.mark.parametrize(
    "text",
    [
        '[control]\nsocket = """/run/a.sock"""\n',  # multi-line string syntax
        'x = """\n[control]\nsocket = "/fake.sock"\n"""\n',  # a header inside a string
        'x = [\n  "[control]",\n]\n',  # a multi-line array
        'control = { socket = "/run/inline.sock" }\n',  # an inline table at the top
        '[control]\n"socket" = "/run/quoted.sock"\n',  # a quoted key
        '[control]\nsocket = "/run/\\u0061.sock"\n',  # an escape
        '["control"]\nsocket = "/run/q.sock"\n',  # a quoted table name
    ],
)
def test_anything_not_plain_goes_to_the_toml_parser(text: str, tmp_path: Path) -> None:
    import tomllib

    assert locate._plain_socket(text) == (False, None)
    config = tmp_path / "c.toml"
    config.write_text(text)
    try:
        control = tomllib.loads(text).get("control", {})
    except tomllib.TOMLDecodeError:
        return
    assert locate.configured_socket(str(config)) == (control.get("socket") or None)


def test_status_with_a_plain_config_imports_no_toml_parser(tmp_path: Path) -> None:
    """The fast path of `lmkeeperd status` (docs/performance.md): tomllib stays unloaded."""
    import subprocess

    config = tmp_path / "c.toml"
    config.write_text(PLAIN)
    code = (
        "import sys; from lmkeeperd.cli import locate; "
        f"print(locate.socket_file({str(config)!r})); print('tomllib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["/run/x/a.sock", "False"]
