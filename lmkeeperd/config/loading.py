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
from lmkeeperd.errors import ConfigEmpty, ConfigError, UnsafeFileError
from lmkeeperd.fileio import CONFIG_CAP, read_small_file
from lmkeeperd.net import is_loopback, split_listen


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
    proxy = good.get("proxy", {})
    if proxy.get("inject_token") and proxy_at and not _loopback_listen(proxy_at):
        found.append(
            (
                "proxy.inject_token",
                f"proxy.inject_token: true with proxy.listen = {proxy_at!r}, which other "
                "machines can reach; the proxy would let them use LM Studio with your token. "
                "Listen on a loopback address (127.0.0.1 or [::1]) or set inject_token = false",
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


def _loopback_listen(listen: str) -> bool:
    try:
        host, _port = split_listen(listen)
    except ValueError:
        return True  # a bad address is reported by its own check
    return is_loopback(host)


def load_config(path: Path | str, *, required: bool = False) -> Config:
    """The config in `path`; a missing file means every default unless `required`.

    Never blocks and never reads more than CONFIG_CAP: a FIFO, a device, a folder or an
    oversize file is a ConfigError. An empty file is ConfigEmpty, never every default:
    it is what a reader sees half-way through an editor's save.
    """
    path = Path(path)
    try:
        raw = read_small_file(path, CONFIG_CAP, what="the file")
    except FileNotFoundError:
        if required:
            raise ConfigError(["no such file"], path=str(path)) from None
        return Config()
    except UnsafeFileError as error:
        # "the file <path> is a FIFO; ..." -> "the file is a FIFO; ...": the path leads anyway.
        said = str(error).replace(f"the file {path} ", "the file ", 1)
        raise ConfigError([f"cannot read it: {said}"], path=str(path)) from None
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
    if not text.strip():
        raise ConfigEmpty(str(path))
    return parse_config(text, source=str(path))
