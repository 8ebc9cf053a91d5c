"""Every value check: wrong types, values out of range, tokens never echoed, durations
(config/values.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmkeeperd.config import parse_config, parse_duration
from lmkeeperd.errors import ConfigError


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


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


@pytest.mark.parametrize(("value", "stored"), [('"0"', 0.0), ('"1s"', 1.0), ('"2m"', 120.0)])
def test_busy_switch_wait_reaches_the_core(value: str, stored: float) -> None:
    from lmkeeperd.daemon.wiring import settings_from

    config = parse_config(f"[model]\nbusy_switch_wait = {value}\n")
    assert config.model.busy_switch_wait == stored
    assert settings_from(config).busy_switch_wait == stored


def test_busy_switch_wait_refuses_negative() -> None:
    with pytest.raises(ConfigError, match='busy_switch_wait: must not be negative, got "-1s"'):
        parse_config('[model]\nbusy_switch_wait = "-1s"\n')


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
