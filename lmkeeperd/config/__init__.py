"""The config file: TOML in, one frozen, validated `Config` out.

Validation reports every problem at once, one line each, as
`line N: <dotted.key>: <what is wrong>` (the line is omitted when it cannot be
found), so that `lmkeeperd config check` can show the whole list in one go.

A value that might be the API token is never echoed in a message: the config
holds only the *name* of the environment variable with the token.

    types.py     the frozen dataclasses and their defaults
    values.py    one check per kind of value (durations, URLs, paths, sizes, ...)
    schema.py    the key table, and the walk that collects every problem
    lines.py     which line of the file a problem is about
    loading.py   parse_config(text), load_config(path)

The CLI imports this package on every command, so imports stay lean (stdlib only;
difflib only when a config has a typo).
"""

from __future__ import annotations

from lmkeeperd.config.loading import load_config, parse_config
from lmkeeperd.config.types import (
    LOAD_SETTINGS,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_DURATION_S,
    Config,
    ControlConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    MemoryConfig,
    MetricsConfig,
    ModelConfig,
    ProxyConfig,
    ServerConfig,
)
from lmkeeperd.config.values import parse_duration

# Kept importable from here for the modules that import them from the config; they live in
# lmkeeperd/net.py, shared with the servers.
from lmkeeperd.net import is_loopback, split_listen

__all__ = [
    "LOAD_SETTINGS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_DURATION_S",
    "Config",
    "ControlConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "MemoryConfig",
    "MetricsConfig",
    "ModelConfig",
    "ProxyConfig",
    "ServerConfig",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_duration",
    "split_listen",
]
