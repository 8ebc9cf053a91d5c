"""Fuzzing config files: random TOML, wrong types, bad durations, unicode, raw bytes.

test_config_loading.py already fuzzes `parse_config` with well-formed TOML documents built from the
schema's keys. This file adds what a person editing the file by hand can produce: any text
at all, TOML assembled from loose fragments (headers, dotted keys, durations in every wrong
spelling, huge and non-finite numbers, dates, arrays, inline tables, unicode), and files of
arbitrary bytes. Each must give a `Config` or a `ConfigError` listing one-line problems;
never another exception, never a hang.

The live test edits the config file of a running daemon with such text: a valid edit is
announced as `config_reloaded`, an invalid one as `config_invalid` while the last good config
keeps running, and the daemon always survives.

Budgets: "ci" runs a few hundred pure examples and a dozen live ones; HYPOTHESIS_PROFILE=bench
runs 10,000 of each pure test (the live test stays at a few hundred: each waits for the
file watcher).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from daemon_harness import DaemonProc, render_toml
from fuzzing import BENCH, budget, report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.config import Config, load_config, parse_config
from lmkeeperd.errors import ConfigError

TOKEN = "sk-lm-abc:def0123456789"  # a token pasted into the file must never be echoed

PURE = settings(
    max_examples=budget(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def check(outcome: Config | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        assert outcome.problems
        for problem in outcome.problems:
            assert isinstance(problem, str) and problem.strip()
            assert "\n" not in problem
            assert TOKEN not in problem
        assert TOKEN not in str(outcome)
    else:
        assert isinstance(outcome, Config)


def parse(text: str) -> Config | ConfigError:
    try:
        return parse_config(text)
    except ConfigError as error:
        return error


# --- fragments a hand-edited file is made of ----------------------------------------------

TABLES = ["server", "model", "model.load", "memory", "control", "log", "proxy", "metrics"]
KEYS = [
    "url", "api_token_env", "request_timeout", "load_timeout", "reconcile_interval",
    "selected", "auto_load", "idle_timeout", "switch_debounce", "draft_model",
    "unload_on_exit", "shutdown_timeout", "context_length", "flash_attention",
    "eval_batch_size", "num_experts", "offload_kv_cache_to_gpu", "budget_fraction",
    "models_dir", "pressure_eject_below", "pressure_grace", "socket", "level", "format",
]  # fmt: skip
DURATIONS = [
    "300ms", "10s", "1h", "0", "-5m", "5 parsecs", "1e400s", "-0ms", "nan", "inf", "+1h",
    "1_000ms", "0x10s", " 5 s ", "5S", "1.5.2s", "", "ms", "10m10s", "\u0663s", "1 h",
]  # fmt: skip


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string (escapes included)


scalars = st.one_of(
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers(-(2**80), 2**80).map(str),
    st.floats().map(repr),  # nan, inf, -inf and 1e+300 are all TOML
    st.sampled_from(DURATIONS).map(_toml_string),
    st.text(max_size=30).map(_toml_string),
    st.sampled_from([_toml_string(TOKEN), "'literal'", '"""multi\nline"""', "1979-05-27"]),
    st.sampled_from(["07:32:00", "1979-05-27T07:32:00Z", "0x1F", "0o17", "0b101", "1e400"]),
    st.sampled_from(["-0.0", "+inf", "1_000", "01", "1__0", "0.", ".5", "true1"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
        | st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=3).map(
            lambda kv: "{ " + ", ".join(f"{k} = {v}" for k, v in kv) + " }"
        )
    ),
    max_leaves=6,
)
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).map(lambda k: f"model.{k}"),
    st.text(min_size=1, max_size=10).map(_toml_string),
    st.sampled_from(["idle_timeuot", "bogus", "0", "a.b.c", "\u00e9t\u00e9", "selected.x"]),
)
lines = st.one_of(
    st.tuples(keys, values).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(TABLES).map(lambda t: f"[{t}]"),
    st.sampled_from(["[[server]]", "[server", "[]", "[model]]", "# comment", "", "=", "key ="]),
    st.text(max_size=40),
)
documents = st.lists(lines, max_size=12).map("\n".join)


def test_any_text_gives_a_config_or_problems_per_line() -> None:
    examples = 0

    @PURE
    @given(st.text(max_size=300))
    def any_text(text: str) -> None:
        nonlocal examples
        examples += 1
        check(parse(text))

    any_text()
    report("config: any text", examples)


def test_toml_from_loose_fragments_gives_a_config_or_problems() -> None:
    examples = 0

    @PURE
    @given(documents)
    def fragments(text: str) -> None:
        nonlocal examples
        examples += 1
        check(parse(text))

    fragments()
    report("config: TOML from loose fragments (types, durations, unicode)", examples)


def test_files_of_any_bytes_give_a_config_or_problems() -> None:
    examples = 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"

        @PURE
        @given(
            st.binary(max_size=300) | documents.map(lambda d: d.encode("utf-8", "surrogatepass"))
        )
        def any_bytes(data: bytes) -> None:
            nonlocal examples
            examples += 1
            path.write_bytes(data)
            try:
                outcome: Config | ConfigError = load_config(path)
            except ConfigError as error:
                outcome = error
                assert str(path) in str(error)
            check(outcome)

        any_bytes()
    report("config: files of any bytes", examples)


# --- the live daemon ---------------------------------------------------------------------------

LIVE = settings(
    max_examples=300 if BENCH else 12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.e2e
def test_the_daemon_takes_good_edits_refuses_bad_ones_and_survives(daemon: DaemonProc) -> None:
    examples = 0
    base = {name: dict(values) for name, values in daemon.tables.items()}

    with daemon.subscribe() as events:

        @LIVE
        @given(st.one_of(documents, st.text(max_size=200), st.just("")), st.booleans())
        def edit(junk: str, valid: bool) -> None:
            nonlocal examples
            examples += 1
            marker = f"fuzz/model-{examples}"  # every valid edit changes `selected`
            good = render_toml({**base, "model": {**base["model"], "selected": marker}})
            text = good if valid else good + "\n" + junk
            expected = parse(text)
            mark = events.mark()
            daemon.write_config(text)
            if isinstance(expected, Config):
                events.wait_for("config_reloaded", after=mark, source="file")
                # The marker is no model the server has: L23 refuses it, naming it.
                events.wait_for("selection_unknown", after=mark, model=marker, source="config")
            else:
                event = events.wait_for("config_invalid", after=mark)
                assert event["error"].strip()
                assert TOKEN not in event["error"]
            assert daemon.proc is not None and daemon.proc.poll() is None

        edit()
    errors = [e for e in daemon.log_events() if e.get("level") in ("error", "critical")]
    assert errors == [], errors[:5]
    report("config: live edits of the daemon's file", examples)
