"""Loading: every problem at once, files, lean imports, random documents (config/loading.py)."""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkeeperd.config import (
    LOAD_SETTINGS,
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    load_config,
    parse_config,
)
from lmkeeperd.errors import ConfigError

# ---------------------------------------------------------------- many problems, syntax, files


def test_every_problem_is_reported_together() -> None:
    text = (
        "[server]\n"
        'url = "ftp://x"\n'
        'request_timeout = "ten"\n'
        "\n"
        "[model]\n"
        'auto_load = "yes"\n'
        "idle_timeuot = 5\n"
        "\n"
        "[model.load]\n"
        "flash_attention = 1\n"
        "[memory]\n"
        "budget_fraction = 2\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="/etc/lmk.toml")
    lines = [p.split(":", 1)[0] for p in caught.value.problems]
    assert lines == ["line 2", "line 3", "line 6", "line 7", "line 10", "line 12"]
    assert caught.value.path == "/etc/lmk.toml"
    assert str(caught.value).startswith("/etc/lmk.toml: line 2: server.url: ")


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope.toml") == Config()


def test_file_is_read_and_errors_name_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[model]\nselected = "qwen/qwen3-4b-2507"\n', encoding="utf-8")
    assert load_config(path).model.selected == "qwen/qwen3-4b-2507"
    path.write_text("[model]\nauto_load = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    assert caught.value.problems == ["line 2: model.auto_load: expected true/false, got 3"]


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b'[model]\nselected = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


# Root reads anything through CAP_DAC_OVERRIDE (and CAP_DAC_READ_SEARCH). Without them
# the kernel applies the mode bits to root too: the child drops both from its effective
# set (Linux's capset, always allowed) and then gets a real EACCES, as any user would.
_DROP_DAC_CAPABILITIES = """
import ctypes
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]
libc = ctypes.CDLL(None, use_errno=True)
header, data = Header(0x20080522, 0), (Data * 2)()
if libc.capget(ctypes.byref(header), data) != 0:
    raise OSError(ctypes.get_errno(), "capget")
data[0].effective &= ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF  # CAP_DAC_OVERRIDE, _READ_SEARCH
if libc.capset(ctypes.byref(header), data) != 0:
    raise OSError(ctypes.get_errno(), "capset")
"""
_LOAD_AND_SAY = """
import sys
from lmkeeperd.config import load_config
from lmkeeperd.errors import ConfigError
try:
    load_config(sys.argv[1])
except ConfigError as error:
    print(error)
"""


@pytest.mark.skipif(
    os.name != "posix" or (os.geteuid() == 0 and not sys.platform.startswith("linux")),
    reason="POSIX permissions; as root, Linux capabilities",
)
def test_file_without_read_permission_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('[model]\nselected = "x"\n', encoding="utf-8")
    path.chmod(0)
    drop = _DROP_DAC_CAPABILITIES if os.geteuid() == 0 else ""
    said = subprocess.run(
        [sys.executable, "-c", drop + _LOAD_AND_SAY, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "cannot read the config: permission denied" in said, said
    assert str(path) in said


def test_importing_config_stays_lean() -> None:
    code = (
        "import sys, lmkeeperd.config, lmkeeperd.paths\n"
        "heavy = {'httpx', 'structlog', 'asyncio', 'psutil', 'typer', 'difflib', 'rich'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- random documents


_SCHEMA_KEYS = {
    "server": ["url", "api_token_env", "request_timeout", "load_timeout", "reconcile_interval"],
    "model": [
        "selected",
        "auto_load",
        "idle_timeout",
        "switch_debounce",
        "draft_model",
        "unload_on_exit",
        "shutdown_timeout",
        "busy_switch_wait",
        "load",
    ],
    "memory": ["budget_fraction"],
    "control": ["socket"],
    "proxy": ["listen", "select_on_request", "inject_token"],
    "metrics": ["listen"],
    "log": ["level", "format"],
}
_NAMES = sorted({k for keys in _SCHEMA_KEYS.values() for k in keys} | set(LOAD_SETTINGS))
_PLAUSIBLE = [
    "10s", "300ms", "1h", "0", "-5m", "debug", "json", "http://127.0.0.1:1234",
    "LM_API_TOKEN", "~/x.sock", "/tmp/x.sock", "qwen/qwen3-4b-2507", "sk-lm-abc:def0123456789",
]  # fmt: skip

leaf_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=15),
    st.sampled_from(_PLAUSIBLE),
    st.dates(),
    st.lists(st.integers(-5, 5), max_size=3),
)
inner_tables = st.dictionaries(st.sampled_from([*LOAD_SETTINGS, "bogus"]), leaf_values, max_size=4)
tables = st.dictionaries(
    st.sampled_from([*_NAMES, "bogus", "idle_timeuot"]),
    st.one_of(leaf_values, inner_tables),
    max_size=6,
)
documents = st.dictionaries(
    st.sampled_from([*_SCHEMA_KEYS, "bogus", "url"]), st.one_of(tables, leaf_values), max_size=6
)


def _toml_string(text: str) -> str:
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f" else c
        for c in text
    )
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"


def _toml_document(document: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    for name, table in document.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(document=documents)
def test_any_document_gives_a_valid_config_or_a_config_error(document: dict[str, Any]) -> None:
    text = _toml_document(document)
    try:
        config = parse_config(text)
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.strip()
            assert "\n" not in problem
            assert "sk-lm-abc:def0123456789" not in problem
        return
    assert isinstance(config, Config)
    positive = [
        config.server.request_timeout,
        config.server.load_timeout,
        config.server.reconcile_interval,
        config.model.shutdown_timeout,
    ]
    assert all(isinstance(d, float) and 0 < d <= 30 * 24 * 3600 for d in positive)
    assert config.model.idle_timeout >= 0
    assert config.model.switch_debounce >= 0
    assert 0 < config.memory.budget_fraction <= 1
    assert set(config.model.load) <= set(LOAD_SETTINGS)
    assert config.log.level in LOG_LEVELS and config.log.format in LOG_FORMATS
    assert config.server.url.startswith(("http://", "https://"))
