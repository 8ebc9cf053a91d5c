"""The key table: which keys each table has, and the check each value goes through.

`check_table` walks a parsed TOML document along `SCHEMA` and collects every problem
(with its dotted key) instead of stopping at the first, so that `lmkeeperd config check`
can list them all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from lmkeeperd.config import values as v
from lmkeeperd.config.types import LOG_FORMATS, LOG_LEVELS, SWITCH_MODES

Check: TypeAlias = Callable[[object], object]
Schema: TypeAlias = Mapping[str, "Check | Schema"]

LOAD_SCHEMA: Schema = {
    "context_length": v.positive_int,
    "eval_batch_size": v.positive_int,
    "flash_attention": v.boolean,
    "num_experts": v.positive_int,
    "offload_kv_cache_to_gpu": v.boolean,
}

SCHEMA: Schema = {
    "server": {
        "url": v.http_url,
        "api_token_env": v.env_name,
        "request_timeout": v.positive_duration,
        "load_timeout": v.positive_duration,
        "reconcile_interval": v.positive_duration,
    },
    "model": {
        "selected": v.trimmed_string,
        "auto_load": v.boolean,
        "idle_timeout": v.idle_duration,
        "switch_debounce": v.non_negative_duration,
        "draft_model": v.trimmed_string,
        "unload_on_exit": v.boolean,
        "shutdown_timeout": v.positive_duration,
        "busy_switch_wait": v.non_negative_duration,
        "max_loaded": v.positive_int,
        "pinned": v.model_keys,
        "switch": v.choice(SWITCH_MODES),
        "load": LOAD_SCHEMA,
    },
    "memory": {
        "budget_fraction": v.fraction,
        "budget": v.size_or_unset,
        "models_dir": v.models_dir,
        "pressure_eject_below": v.size_or_off,
        "pressure_grace": v.positive_duration,
    },
    "control": {"socket": v.socket_path},
    "proxy": {"listen": v.listen, "select_on_request": v.boolean, "inject_token": v.boolean},
    "metrics": {"listen": v.listen},
    "log": {"level": v.choice(LOG_LEVELS), "format": v.choice(LOG_FORMATS)},
}


def _leaf_paths(schema: Schema, prefix: str = "") -> dict[str, list[str]]:
    """Each key name, and the dotted paths it has anywhere in the schema."""
    found: dict[str, list[str]] = {}
    for name, sub in schema.items():
        dotted = prefix + name
        found.setdefault(name, []).append(dotted)
        if isinstance(sub, Mapping):
            for leaf, paths in _leaf_paths(sub, dotted + ".").items():
                found.setdefault(leaf, []).extend(paths)
    return found


def _unknown_key_problem(dotted: str, name: str, schema: Schema, value: object) -> str:
    import difflib  # only paid for when a config has a typo

    if schema is LOAD_SCHEMA:
        what = "unknown load setting"
    elif schema is SCHEMA and isinstance(value, dict):
        what = "unknown table"
    else:
        what = "unknown key"
    elsewhere = [path for path in _leaf_paths(SCHEMA).get(name, []) if path != dotted]
    # The key is the user's text: a quoted TOML key may hold a newline, and every problem
    # must stay on one line (found by tests/config/test_fuzz_config.py).
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in dotted)
    if elsewhere:
        return f"{shown}: {what} here (did you mean {elsewhere[0]}?)"
    hints = [f"did you mean {close}?" for close in difflib.get_close_matches(name, list(schema), 1)]
    if schema is SCHEMA:
        hints.append("known tables: " + ", ".join(schema))
    elif schema is LOAD_SCHEMA:
        hints.append("allowed: " + ", ".join(schema))
    elif not hints:
        hints.append("known keys: " + ", ".join(schema))
    return f"{shown}: {what} ({' '.join(hints)})"


def check_table(
    data: Mapping[str, Any], schema: Schema, prefix: str, problems: list[tuple[str, str]]
) -> dict[str, Any]:
    """Checks one table; returns the good values and appends (dotted key, problem)."""
    good: dict[str, Any] = {}
    for name, value in data.items():
        dotted = prefix + name
        rule = schema.get(name)
        if rule is None:
            problems.append((dotted, _unknown_key_problem(dotted, name, schema, value)))
        elif isinstance(rule, Mapping):
            if isinstance(value, dict):
                good[name] = check_table(value, rule, dotted + ".", problems)
            else:
                problems.append(
                    (dotted, f"{dotted}: expected a table ([{dotted}]), got {v.show(value)}")
                )
        else:
            try:
                good[name] = rule(value)
            except v.Invalid as invalid:
                problems.append((dotted, f"{dotted}: {invalid}"))
    return good
