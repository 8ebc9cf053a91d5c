"""Loading the config: a file or TOML text in, one frozen, validated `Config` out."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import cast

from lmkeeperd.config.lines import syntax_problem, with_line
from lmkeeperd.config.schema import SCHEMA, check_table
from lmkeeperd.config.types import (
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
from lmkeeperd.errors import ConfigError


def parse_config(text: str, source: str | None = None) -> Config:
    """A Config from TOML text; ConfigError lists every problem (source names the file)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([syntax_problem(error, text)], path=source) from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise ConfigError([f"not valid TOML: {str(error)[:100]}"], path=source) from None
    except RecursionError:
        raise ConfigError(
            ["not valid TOML: arrays or tables nested too deeply"], path=source
        ) from None

    found: list[tuple[str, str]] = []
    good = check_table(data, SCHEMA, "", found)
    proxy_at = good.get("proxy", {}).get("listen", "")
    metrics_at = good.get("metrics", {}).get("listen", "")
    if proxy_at and proxy_at == metrics_at and not proxy_at.endswith(":0"):
        found.append(
            (
                "metrics.listen",
                "metrics.listen: is proxy.listen too; the proxy serves /lmkeeperd/metrics "
                'itself, so set metrics.listen = ""',
            )
        )
    if found:
        raise ConfigError([with_line(text, key, problem) for key, problem in found], path=source)

    model = dict(good.get("model", {}))
    if "load" in model:
        model["load"] = MappingProxyType(dict(model["load"]))
    log = good.get("log", {})
    return Config(
        server=ServerConfig(**good.get("server", {})),
        model=ModelConfig(**model),
        memory=MemoryConfig(**good.get("memory", {})),
        control=ControlConfig(**good.get("control", {})),
        proxy=ProxyConfig(**good.get("proxy", {})),
        metrics=MetricsConfig(**good.get("metrics", {})),
        log=LogConfig(
            level=cast(LogLevel, log.get("level", "info")),
            format=cast(LogFormat, log.get("format", "auto")),
        ),
    )


def load_config(path: Path | str) -> Config:
    """The config in `path`; a missing file means every default."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except IsADirectoryError:
        raise ConfigError(["cannot read the config: it is a directory"], path=str(path)) from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError([f"cannot read the config: {reason.lower()}"], path=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"not UTF-8 text (bad byte at offset {error.start})"], path=str(path)
        ) from None
    return parse_config(text, source=str(path))
