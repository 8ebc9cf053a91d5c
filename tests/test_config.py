"""The config file: defaults, every key's checks, messages with keys and lines."""

from __future__ import annotations

import dataclasses
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
    ControlConfig,
    LogConfig,
    MemoryConfig,
    MetricsConfig,
    ModelConfig,
    ProxyConfig,
    ServerConfig,
    load_config,
    parse_config,
    parse_duration,
)
from lmkeeperd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


# ---------------------------------------------------------------- defaults


def test_built_in_defaults() -> None:
    config = Config()
    assert config.server == ServerConfig(
        url="http://127.0.0.1:1234",
        api_token_env="LM_API_TOKEN",
        request_timeout=10.0,
        load_timeout=600.0,
        reconcile_interval=15.0,
    )
    assert config.model == ModelConfig(
        selected="",
        auto_load=True,
        idle_timeout=1800.0,
        switch_debounce=0.3,
        draft_model="",
        unload_on_exit=True,
        shutdown_timeout=2.0,
        load={},
    )
    assert config.memory == MemoryConfig(budget_fraction=0.8)
    assert config.control == ControlConfig(socket="")
    assert config.log == LogConfig(level="info", format="auto")


def test_empty_file_is_the_defaults() -> None:
    assert parse_config("") == Config()
    assert parse_config("# nothing but a comment\n[server]\n[model.load]\n") == Config()


def test_example_file_is_exactly_the_defaults() -> None:
    assert parse_config(EXAMPLE.read_text(encoding="utf-8"), source=str(EXAMPLE)) == Config()


def test_example_file_shows_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = [
        f.name
        for c in (
            ServerConfig,
            ModelConfig,
            MemoryConfig,
            ControlConfig,
            ProxyConfig,
            MetricsConfig,
            LogConfig,
        )
        for f in dataclasses.fields(c)
    ]
    for key in [*(k for k in keys if k != "load"), *LOAD_SETTINGS]:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key
    tables = ("[server]", "[model]", "[model.load]", "[memory]", "[control]", "[proxy]")
    for table in (*tables, "[metrics]", "[log]"):
        assert f"\n{table}\n" in text


def test_config_is_frozen() -> None:
    config = parse_config("[model.load]\ncontext_length = 4096\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.selected = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.model.load["context_length"] = 1  # type: ignore[index]


def test_interface_example_parses() -> None:
    config = parse_config(
        """
[server]
url = "http://127.0.0.1:1234"
api_token_env = "LM_API_TOKEN"
request_timeout = "10s"
load_timeout = "10m"

[model]
selected = "qwen/qwen3-4b-2507"
auto_load = true
idle_timeout = "30m"
switch_debounce = "300ms"
draft_model = ""
unload_on_exit = true
shutdown_timeout = "2s"

[model.load]
context_length = 8192
flash_attention = true

[memory]
budget_fraction = 0.8

[control]
socket = ""

[log]
level = "info"
format = "auto"
"""
    )
    assert config.model.selected == "qwen/qwen3-4b-2507"
    assert config.model.load == {"context_length": 8192, "flash_attention": True}
    assert config.server.load_timeout == 600.0


def test_every_load_setting_is_accepted() -> None:
    config = parse_config(
        "[model.load]\ncontext_length = 4096\neval_batch_size = 256\nflash_attention = false\n"
        "num_experts = 8\noffload_kv_cache_to_gpu = true\n"
    )
    assert config.model.load == {
        "context_length": 4096,
        "eval_batch_size": 256,
        "flash_attention": False,
        "num_experts": 8,
        "offload_kv_cache_to_gpu": True,
    }


def test_values_are_normalised() -> None:
    config = parse_config(
        '[server]\nurl = " https://lm.example:8443/ "\napi_token_env = " MY_TOKEN "\n'
        '[model]\nselected = "  qwen/qwen3-4b-2507 \\n"\ndraft_model = " qwen/qwen2.5-0.5b "\n'
        '[log]\nlevel = "DEBUG"\nformat = " Json"\n[memory]\nbudget_fraction = 1\n'
    )
    assert config.server.url == "https://lm.example:8443"
    assert config.server.api_token_env == "MY_TOKEN"
    assert config.model.selected == "qwen/qwen3-4b-2507"
    assert config.model.draft_model == "qwen/qwen2.5-0.5b"
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert config.memory.budget_fraction == 1.0


def test_socket_path_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = parse_config('[control]\nsocket = "~/lmk.sock"\n')
    assert config.control.socket == str(tmp_path / "lmk.sock")


# ---------------------------------------------------------------- wrong types, one key at a time

TYPE_ERRORS = [
    ("server", "url", "5", "server.url: expected a string, got 5"),
    ("server", "api_token_env", "5", "server.api_token_env: expected the name of an environment"),
    (
        "server",
        "request_timeout",
        "true",
        'server.request_timeout: expected a duration like "300ms"',
    ),
    ("server", "load_timeout", "[600]", "server.load_timeout: expected a duration like"),
    ("server", "reconcile_interval", "{ s = 1 }", "got a table"),
    ("model", "selected", "1", "model.selected: expected a string, got 1"),
    ("model", "auto_load", '"yes"', 'model.auto_load: expected true/false, got "yes"'),
    ("model", "auto_load", "1", "model.auto_load: expected true/false, got 1"),
    ("model", "idle_timeout", '"soon"', 'model.idle_timeout: expected a duration like "300ms"'),
    ("model", "switch_debounce", "false", "model.switch_debounce: expected a duration"),
    ("model", "draft_model", "true", "model.draft_model: expected a string, got true"),
    ("model", "unload_on_exit", "0", "model.unload_on_exit: expected true/false, got 0"),
    ("model", "shutdown_timeout", "1979-05-27", "got a date/time (1979-05-27)"),
    ("model", "load", "8192", "model.load: expected a table ([model.load]), got 8192"),
    (
        "model.load",
        "context_length",
        "8192.0",
        "model.load.context_length: expected a whole number",
    ),
    ("model.load", "context_length", "true", "model.load.context_length: expected a whole number"),
    (
        "model.load",
        "eval_batch_size",
        '"512"',
        'eval_batch_size: expected a whole number, got "512"',
    ),
    (
        "model.load",
        "flash_attention",
        "1",
        "model.load.flash_attention: expected true/false, got 1",
    ),
    ("model.load", "num_experts", "0", "model.load.num_experts: must be greater than 0, got 0"),
    (
        "model.load",
        "offload_kv_cache_to_gpu",
        '"on"',
        "offload_kv_cache_to_gpu: expected true/false",
    ),
    (
        "memory",
        "budget_fraction",
        "true",
        "memory.budget_fraction: expected a number between 0 and 1",
    ),
    ("memory", "budget_fraction", '"0.8"', 'expected a number between 0 and 1, got "0.8"'),
    ("control", "socket", "1", "control.socket: expected a string, got 1"),
    ("log", "level", "1", "log.level: expected a string, got 1"),
    (
        "log",
        "level",
        '"verbose"',
        'log.level: expected one of debug, info, warning, error, got "verbose"',
    ),
    ("log", "format", '"pretty"', 'log.format: expected one of auto, json, console, got "pretty"'),
]


@pytest.mark.parametrize(("table", "key", "value", "message"), TYPE_ERRORS)
def test_wrong_type_names_key_expectation_value_and_line(
    table: str, key: str, value: str, message: str
) -> None:
    text = f"# my config\n\n[{table}]\n{key} = {value}\n"
    (problem,) = problems_of(text)
    assert problem.startswith("line 4: ")
    assert message in problem


def test_a_table_where_a_table_belongs_only() -> None:
    (problem,) = problems_of('model = "qwen/qwen3-4b-2507"\n')
    assert problem == 'line 1: model: expected a table ([model]), got "qwen/qwen3-4b-2507"'


# ---------------------------------------------------------------- values out of range


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[memory]\nbudget_fraction = 0", "must be more than 0 and at most 1, got 0"),
        ("[memory]\nbudget_fraction = 1.5", "must be more than 0 and at most 1, got 1.5"),
        ("[memory]\nbudget_fraction = -0.2", "got -0.2"),
        ("[memory]\nbudget_fraction = nan", "got nan"),
        ('[server]\nurl = "ftp://127.0.0.1:1234"', "expected an http:// or https:// URL"),
        ('[server]\nurl = "127.0.0.1:1234"', "expected an http:// or https:// URL"),
        ('[server]\nurl = "http://"', "with a host"),
        ('[server]\nurl = "http://127.0.0.1:99999"', "not a valid URL"),
        ('[server]\nurl = "http://127.0.0.1:1234/?x=1"', "without spaces, query or fragment"),
        ('[server]\napi_token_env = ""', "expected the name of an environment variable"),
        ('[server]\napi_token_env = "1TOKEN"', "letters, digits and _, not starting with a digit"),
        (
            '[control]\nsocket = "run/lmk.sock"',
            'must be an absolute path (or start with ~/), got "run',
        ),
        ('[control]\nsocket = "/' + "d" * 200 + '.sock"', "bytes long; Unix socket paths can have"),
        (
            '[server]\nrequest_timeout = "0"',
            'server.request_timeout: must be longer than 0, got "0"',
        ),
        ("[server]\nload_timeout = -1", "server.load_timeout: must be longer than 0, got -1"),
        ('[model]\nshutdown_timeout = "0s"', "model.shutdown_timeout: must be longer than 0"),
        ('[model]\nswitch_debounce = "-1ms"', 'switch_debounce: must not be negative, got "-1ms"'),
        ('[model]\nidle_timeout = "45d"', "model.idle_timeout: expected a duration like"),
        ("[server]\nload_timeout = 1e12", "server.load_timeout: 1000000000000.0 is too long"),
    ],
)
def test_values_out_of_range_are_named(text: str, message: str) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith("line 2: ")
    assert message in problem


def test_values_that_look_like_tokens_are_never_echoed() -> None:
    token = "sk-lm-Zq8VxT3pW9rK2mN7:Yb4Hc6Jd1Lf5Gs0A"
    (problem,) = problems_of(f'[server]\nurl = "{token}"\n')
    assert problem.endswith("got a string that looks like an API token (not shown)")
    assert "Zq8V" not in problem
    (problem,) = problems_of('[log]\nlevel = "Zq8VxT3pW9rK2mN7Yb4Hc6Jd1Lf5Gs0A"\n')
    assert "Zq8V" not in problem


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    (problem,) = problems_of('[server]\nurl = "http://me:hunter2@127.0.0.1:1234"\n')
    assert "must not contain a user name or password" in problem
    assert "hunter2" not in problem


@pytest.mark.parametrize(
    "token",
    [
        "sk-lm-Zq8VxT3pW9rK2mN7:Yb4Hc6Jd1Lf5Gs0A",
        "lmstudio-0123456789abcdef",
        "Zq8VxT3pW9rK2mN7Yb4Hc6Jd1Lf5Gs0AbC9dE",
        "sk-short",
    ],
)
def test_a_token_in_api_token_env_is_explained_never_echoed(token: str) -> None:
    (problem,) = problems_of(f'[server]\napi_token_env = "{token}"\n')
    assert "names the environment variable that holds the token, not the token itself" in problem
    assert token not in problem
    assert token[:6] not in problem


@pytest.mark.parametrize(
    "name", ["LM_API_TOKEN", "lm_api_token", "MY_VERY_LONG_LMSTUDIO_API_TOKEN_NAME", "_T"]
)
def test_env_var_names_are_accepted(name: str) -> None:
    assert parse_config(f'[server]\napi_token_env = "{name}"\n').server.api_token_env == name


@pytest.mark.parametrize(
    ("value", "stored"), [('"0"', 0.0), ("-5", 0.0), ('"-1h"', 0.0), ('"15m"', 900.0)]
)
def test_idle_timeout_zero_or_less_disables(value: str, stored: float) -> None:
    assert parse_config(f"[model]\nidle_timeout = {value}\n").model.idle_timeout == stored


def test_switch_debounce_may_be_zero() -> None:
    assert parse_config('[model]\nswitch_debounce = "0"\n').model.switch_debounce == 0.0


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[server]\nurl = "http://127.0.0.1:1234"\n\n'
            '[model]\nauto_load = true\nidle_timeuot = "30m"\n',
            "line 6: model.idle_timeuot: unknown key (did you mean idle_timeout?)",
        ),
        (
            "[model.load]\ncontxt_length = 8192\n",
            "line 2: model.load.contxt_length: unknown load setting (did you mean context_length? "
            "allowed: context_length, eval_batch_size, flash_attention, num_experts, "
            "offload_kv_cache_to_gpu)",
        ),
        (
            "[model.load]\nttl = 60\n",
            "line 2: model.load.ttl: unknown load setting (allowed: context_length, "
            "eval_batch_size, flash_attention, num_experts, offload_kv_cache_to_gpu)",
        ),
        (
            "[logs]\nlevel = 'info'\n",
            "line 1: logs: unknown table (did you mean log? known tables: "
            "server, model, memory, control, proxy, metrics, log)",
        ),
        (
            '[server]\nselected = "x"\n',
            "line 2: server.selected: unknown key here (did you mean model.selected?)",
        ),
        ('url = "http://x"\n', "line 1: url: unknown key here (did you mean server.url?)"),
        (
            "[memory]\nzzz = 1\n",
            "line 2: memory.zzz: unknown key (known keys: budget_fraction, models_dir, "
            "pressure_eject_below, pressure_grace)",
        ),
        (
            "[model]\nload = { context_lenght = 1 }\n",
            "line 2: model.load.context_lenght: unknown load",
        ),
        (
            "model.auto_lod = true\n",
            "line 1: model.auto_lod: unknown key (did you mean auto_load?)",
        ),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion_and_line(text: str, problem: str) -> None:
    (found,) = problems_of(text)
    assert found.startswith(problem)


def test_lines_are_found_for_inline_tables_dotted_and_quoted_keys() -> None:
    text = (
        "[server]\n"
        'note = """\n'
        "auto_load = 1\n"  # a look-alike inside a multi-line string
        '"""\n'
        "[ model ]\n"
        '"unload_on_exit" = "no"\n'
        "load.flash_attention = 1\n"
    )
    problems = problems_of(text)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        ["line 2", "server.note"],
        ["line 6", "model.unload_on_exit"],
        ["line 7", "model.load.flash_attention"],
    ]
    # No line of its own: the line of the inline table it is in.
    (problem,) = problems_of('\nmodel = { auto_load = "yes" }\n')
    assert problem.startswith("line 2: model.auto_load: expected true/false")


def test_problems_without_a_findable_line_have_no_line() -> None:
    text = '[model]\n"auto.load" = 1\n'  # a quoted key with a dot defeats the scan
    (problem,) = problems_of(text)
    assert problem.startswith("model.auto.load: unknown key")


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


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("[model]\nauto_load = yes\n", "line 2, column 13: not valid TOML: "),
        ("[model]\nselected = 'a'\nselected = 'b'\n", "line 3, column "),
        ('[model]\nselected = "unterminated\n', "line 2, column "),
        ("[model]\nauto_load = [true,\n", "line 2 (end of file): not valid TOML: "),
        ("a = " + "[" * 3000 + "]" * 3000, "not valid TOML: arrays or tables nested too deeply"),
        ("a = " + "1" * 5000, "not valid TOML: "),
    ],
)
def test_toml_syntax_error_carries_the_line(text: str, start: str) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith(start)


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


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_file_without_read_permission_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("", encoding="utf-8")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read the config: permission denied"):
        load_config(path)


def test_importing_config_stays_lean() -> None:
    code = (
        "import sys, lmkeeperd.config, lmkeeperd.paths\n"
        "heavy = {'httpx', 'structlog', 'asyncio', 'psutil', 'typer', 'difflib', 'rich'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("300ms", 0.3),
        ("2s", 2.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("90", 90.0),
        ("0", 0.0),
        (" 10 s ", 10.0),
        (5, 5.0),
        (2.5, 2.5),
        (0, 0.0),
        ("-0", 0.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "model.idle_timeout") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "10x",
            'expected a duration like "300ms", "10s", "10m", "1h" or a number of seconds, '
            'got "10x"',
        ),
        ("10 minutes", 'got "10 minutes"'),
        ("", 'got ""'),
        ("1e3", 'got "1e3"'),
        ("10M", 'got "10M"'),
        (True, "got true"),
        (None, "got a date/time (None)"),
        ([1], "got an array"),
        (math.nan, "got nan"),
        (math.inf, "inf is too long (at most 30 days)"),
        ("31d", 'got "31d"'),
        ("721h", '"721h" is too long (at most 30 days)'),
        ("-5s", 'must not be negative, got "-5s"'),
        (-1, "must not be negative, got -1"),
        (10**400, "is too long"),
    ],
)
def test_bad_durations_name_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "server.load_timeout")
    (problem,) = caught.value.problems
    assert problem.startswith("server.load_timeout: ")
    assert message in problem


anything = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\A-?[0-9]{0,4}(\.[0-9]{0,3})?\s?(ms|s|m|h|d)?\Z"),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dates(),
)


@given(value=anything)
def test_parse_duration_gives_seconds_or_a_config_error_naming_the_key(value: object) -> None:
    try:
        seconds = parse_duration(value, "model.switch_debounce")
    except ConfigError as error:
        assert error.problems
        assert all(p.startswith("model.switch_debounce: ") for p in error.problems)
    else:
        assert isinstance(seconds, float)
        assert 0.0 <= seconds <= 30 * 24 * 3600


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
