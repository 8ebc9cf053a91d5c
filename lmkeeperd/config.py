"""The config file: TOML in, one frozen, validated `Config` out.

Validation reports every problem at once, one line each, as
`line N: <dotted.key>: <what is wrong>` (the line is omitted when it cannot be
found), so that `lmkeeperd config check` can show the whole list in one go.

Line numbers: tomllib reports a position only for syntax errors. For problems
with values, the line is found by scanning the text for the key inside its
table (`[model]` then `auto_load = ...`, or a dotted `model.auto_load = ...`);
that scan is a best effort that handles the usual layouts, and falls back to
the line of the enclosing inline table when the key itself is not on a line
of its own.

A value that might be the API token is never echoed in a message: the config
holds only the *name* of the environment variable with the token.

The CLI imports this module on every command, so imports stay lean.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import urlsplit

from lmkeeperd.errors import ConfigError

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")

# The settings LM Studio's `POST /api/v1/models/load` accepts besides `model`
# (lmstudio-api.md), with the type each must have.
LOAD_SETTINGS: tuple[str, ...] = (
    "context_length",
    "eval_batch_size",
    "flash_attention",
    "num_experts",
    "offload_kv_cache_to_gpu",
)

# Anything longer is almost surely a unit mistake, and some timer APIs reject
# very large timeouts outright.
MAX_DURATION_S = 30 * 24 * 3600.0


def _no_load_settings() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    url: str = "http://127.0.0.1:1234"
    api_token_env: str = "LM_API_TOKEN"
    request_timeout: float = 10.0
    load_timeout: float = 600.0
    reconcile_interval: float = 15.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    selected: str = ""
    auto_load: bool = True
    idle_timeout: float = 1800.0  # 0 disables idle eject (a negative value is stored as 0)
    switch_debounce: float = 0.3
    draft_model: str = ""
    unload_on_exit: bool = True
    shutdown_timeout: float = 2.0
    # Empty by default: LM Studio then applies the user's own per-model settings.
    load: Mapping[str, Any] = field(default_factory=_no_load_settings)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    budget_fraction: float = 0.8
    models_dir: str = ""  # "" = LM Studio's default, ~/.lmstudio/models
    pressure_eject_below: int | None = None  # bytes; None = memory-pressure eject off
    pressure_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = ""  # "" = lmkeeperd.sock in the user runtime folder (see paths.py)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: str = ""  # "host:port" of the proxy in front of [server] url; "" = off
    select_on_request: bool = False  # a request naming another model switches to it
    inject_token: bool = False  # add our token to requests that carry no Authorization


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # "host:port" of a metrics-only listener; "" = off


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)


class _Invalid(Exception):
    """A value is wrong; the message says how, without the key (added by the caller)."""


# ---------------------------------------------------------------- showing values


def _looks_like_secret(text: str) -> bool:
    # A token pasted in the wrong place must not be echoed back into logs either.
    # URLs, paths and model keys all contain '/' or '.', so they still show.
    if text.startswith("sk-"):
        return True
    word = len(text) >= 24 and not any(c.isspace() or c in "/." for c in text)
    return word and any(c.isdigit() for c in text) and any(c.isalpha() for c in text)


def _show_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    return c if c.isprintable() else repr(c)[1:-1]


def _show(value: object) -> str:
    """A value as the user wrote it in TOML, short enough for one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if _looks_like_secret(value):
            return "a string that looks like an API token (not shown)"
        shown = value if len(value) <= 40 else value[:40] + "…"
        return '"' + "".join(_show_char(c) for c in shown) + '"'
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a date/time ({value})"


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_show(value)}")


# ---------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"\s*(-?)\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_WORDS = 'a duration like "300ms", "10s", "10m", "1h" or a number of seconds'


def _signed_duration(value: object) -> float:
    if isinstance(value, bool):
        raise _expected(_DURATION_WORDS, value)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise _Invalid(f"{_show(value)} is too long (at most 30 days)") from None
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise _expected(_DURATION_WORDS, value)
        sign, number, unit = match.groups()
        seconds = float(number) * _UNIT_SECONDS[unit or "s"] * (-1.0 if sign else 1.0)
    else:
        raise _expected(_DURATION_WORDS, value)
    if math.isnan(seconds):
        raise _expected(_DURATION_WORDS, value)
    if abs(seconds) > MAX_DURATION_S:
        raise _Invalid(f"{_show(value)} is too long (at most 30 days)")
    return seconds


def _non_negative_duration(value: object) -> float:
    seconds = _signed_duration(value)
    if seconds < 0:
        raise _Invalid(f"must not be negative, got {_show(value)}")
    return seconds + 0.0  # turns -0.0 into 0.0


def _positive_duration(value: object) -> float:
    seconds = _signed_duration(value)
    if seconds <= 0:
        raise _Invalid(f"must be longer than 0, got {_show(value)}")
    return seconds


def _idle_duration(value: object) -> float:
    # Lifecycle L11: "0 or less disables idle eject"; one spelling of "off" is enough.
    return max(0.0, _signed_duration(value))


def parse_duration(value: object, key: str) -> float:
    """Seconds from `"300ms"`, `"2s"`, `"10m"`, `"1h"`, `"0"` or a plain number of seconds.

    Raises ConfigError naming `key` for anything else, including negative values.
    """
    try:
        return _non_negative_duration(value)
    except _Invalid as problem:
        raise ConfigError([f"{key}: {problem}"]) from None


# ---------------------------------------------------------------- other value checks


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def _trimmed_string(value: object) -> str:
    return _string(value).strip()


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("true/false", value)
    return value


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("a whole number", value)
    if value <= 0:
        raise _Invalid(f"must be greater than 0, got {value}")
    return value


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected("a number between 0 and 1", value)
    if not 0 < value <= 1:  # NaN fails this too
        raise _Invalid(f"must be more than 0 and at most 1, got {_show(value)}")
    return float(value)


def _choice(allowed: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        chosen = _string(value).strip().lower()
        if chosen not in allowed:
            raise _Invalid(f"expected one of {', '.join(allowed)}, got {_show(value)}")
        return chosen

    return check


def _url(value: object) -> str:
    url = _string(value).strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _Invalid(f"not a valid URL: {_show(url)}") from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: it holds a password. The token goes in an env var instead.
        raise _Invalid(
            "must not contain a user name or password; put the API token in the "
            "environment variable named by server.api_token_env"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _expected('an http:// or https:// URL with a host, like "http://127.0.0.1:1234"', url)
    if any(c.isspace() for c in url) or parts.query or parts.fragment:
        raise _Invalid(
            f"must be a plain http(s) URL without spaces, query or fragment, got {_show(url)}"
        )
    return url.rstrip("/")


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _looks_like_token(text: str) -> bool:
    if not _ENV_NAME_RE.fullmatch(text):
        return len(text) >= 12 or text.startswith("sk-")
    # Env var names are words joined by '_'; a long mixed-case, digit-laden run is a key.
    mixed = any(c.islower() for c in text) and any(c.isupper() for c in text)
    return len(text) >= 32 and "_" not in text and mixed and any(c.isdigit() for c in text)


def _env_name(value: object) -> str:
    # Never echo the value: people paste the token itself here.
    if not isinstance(value, str):
        raise _Invalid("expected the name of an environment variable, like LM_API_TOKEN")
    name = value.strip()
    if _looks_like_token(name):
        raise _Invalid(
            "api_token_env names the environment variable that holds the token, "
            "not the token itself (for example LM_API_TOKEN)"
        )
    if not _ENV_NAME_RE.fullmatch(name):
        raise _Invalid(
            "expected the name of an environment variable, like LM_API_TOKEN "
            "(letters, digits and _, not starting with a digit)"
        )
    return name


# sun_path is 104 bytes on macOS and 108 on Linux, NUL included.
_SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107


def _socket_path(value: object) -> str:
    raw = _string(value).strip()
    if not raw:
        return ""
    if "\0" in raw:
        raise _Invalid("must not contain a NUL character")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:
        raise _Invalid(f"cannot expand ~ in {_show(raw)}: no such home directory") from None
    if not path.is_absolute():
        raise _Invalid(f"must be an absolute path (or start with ~/), got {_show(raw)}")
    size = len(os.fsencode(path))
    if size > _SOCKET_PATH_MAX:
        raise _Invalid(
            f"is {size} bytes long; Unix socket paths can have at most {_SOCKET_PATH_MAX} here"
        )
    return str(path)


def _models_dir(value: object) -> str:
    raw = _string(value).strip()
    if not raw:
        return ""
    try:
        return str(Path(raw).expanduser())
    except RuntimeError:
        raise _Invalid(f"cannot expand ~ in {_show(raw)}: no such home directory") from None


def split_listen(address: str) -> tuple[str, int]:
    """("127.0.0.1", 1235) from "127.0.0.1:1235"; IPv6 hosts go in brackets, "[::1]:1235".

    Port 0 lets the system pick a free port. Raises ValueError saying what is wrong.
    """
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host:
        raise ValueError('expected "host:port", like "127.0.0.1:1235"')
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError("only IPv6 addresses go in [brackets]")
    elif ":" in host:
        raise ValueError('an IPv6 address goes in brackets, like "[::1]:1235"')
    if not host or not _HOST_RE.fullmatch(host):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IPs: only this machine can connect there."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to an address others can reach


_HOST_RE = re.compile(r"[A-Za-z0-9._:%-]+")


def _listen(value: object) -> str:
    raw = _string(value).strip()
    if not raw:
        return ""
    try:
        split_listen(raw)
    except ValueError as e:
        raise _Invalid(f'{e}, or "" for off') from None
    return raw


def _size_or_off(value: object) -> int | None:
    """A size like "2GB" or "512MiB"; "" turns the feature off."""
    if not isinstance(value, str):
        raise _expected('a size like "2GB" or "512MiB", or "" for off', value)
    if not value.strip():
        return None
    from lmkeeperd.memory.sizes import parse_size  # stdlib-only module

    try:
        return parse_size(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None


# ---------------------------------------------------------------- the schema

_Check: TypeAlias = Callable[[object], object]
_Schema: TypeAlias = Mapping[str, "_Check | _Schema"]

_LOAD_SCHEMA: _Schema = {
    "context_length": _positive_int,
    "eval_batch_size": _positive_int,
    "flash_attention": _bool,
    "num_experts": _positive_int,
    "offload_kv_cache_to_gpu": _bool,
}

_SCHEMA: _Schema = {
    "server": {
        "url": _url,
        "api_token_env": _env_name,
        "request_timeout": _positive_duration,
        "load_timeout": _positive_duration,
        "reconcile_interval": _positive_duration,
    },
    "model": {
        "selected": _trimmed_string,
        "auto_load": _bool,
        "idle_timeout": _idle_duration,
        "switch_debounce": _non_negative_duration,
        "draft_model": _trimmed_string,
        "unload_on_exit": _bool,
        "shutdown_timeout": _positive_duration,
        "load": _LOAD_SCHEMA,
    },
    "memory": {
        "budget_fraction": _fraction,
        "models_dir": _models_dir,
        "pressure_eject_below": _size_or_off,
        "pressure_grace": _positive_duration,
    },
    "control": {"socket": _socket_path},
    "proxy": {"listen": _listen, "select_on_request": _bool, "inject_token": _bool},
    "metrics": {"listen": _listen},
    "log": {"level": _choice(LOG_LEVELS), "format": _choice(LOG_FORMATS)},
}


def _leaf_paths(schema: _Schema, prefix: str = "") -> dict[str, list[str]]:
    """Each key name, and the dotted paths it has anywhere in the schema."""
    found: dict[str, list[str]] = {}
    for name, sub in schema.items():
        dotted = prefix + name
        found.setdefault(name, []).append(dotted)
        if isinstance(sub, Mapping):
            for leaf, paths in _leaf_paths(sub, dotted + ".").items():
                found.setdefault(leaf, []).extend(paths)
    return found


def _unknown_key_problem(dotted: str, name: str, schema: _Schema, value: object) -> str:
    import difflib  # only paid for when a config has a typo

    if schema is _LOAD_SCHEMA:
        what = "unknown load setting"
    elif schema is _SCHEMA and isinstance(value, dict):
        what = "unknown table"
    else:
        what = "unknown key"
    elsewhere = [path for path in _leaf_paths(_SCHEMA).get(name, []) if path != dotted]
    # The key is the user's text: a quoted TOML key may hold a newline, and every problem
    # must stay on one line (found by tests/test_fuzz_config.py).
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in dotted)
    if elsewhere:
        return f"{shown}: {what} here (did you mean {elsewhere[0]}?)"
    hints = [f"did you mean {close}?" for close in difflib.get_close_matches(name, list(schema), 1)]
    if schema is _SCHEMA:
        hints.append("known tables: " + ", ".join(schema))
    elif schema is _LOAD_SCHEMA:
        hints.append("allowed: " + ", ".join(schema))
    elif not hints:
        hints.append("known keys: " + ", ".join(schema))
    return f"{shown}: {what} ({' '.join(hints)})"


def _check_table(
    data: Mapping[str, Any], schema: _Schema, prefix: str, problems: list[tuple[str, str]]
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
                good[name] = _check_table(value, rule, dotted + ".", problems)
            else:
                problems.append(
                    (dotted, f"{dotted}: expected a table ([{dotted}]), got {_show(value)}")
                )
        else:
            try:
                good[name] = rule(value)
            except _Invalid as invalid:
                problems.append((dotted, f"{dotted}: {invalid}"))
    return good


# ---------------------------------------------------------------- finding lines

_HEADER_RE = re.compile(r"\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?")
_KEY_RE = re.compile(
    r"\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_KEY_PART_RE = re.compile(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'")


def _key_parts(raw: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in _KEY_PART_RE.findall(raw))


def _find_line(text: str, dotted: str) -> int | None:
    """The 1-based line where `dotted` is set, or where its enclosing inline table is."""
    target = tuple(dotted.split("."))
    table: tuple[str, ...] = ()
    in_multiline = False
    enclosing: tuple[int, int] | None = None  # (depth, line) of the deepest enclosing key
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            in_multiline = (line.count('"""') + line.count("'''")) % 2 == 0
            continue
        if header := _HEADER_RE.fullmatch(line):
            table = _key_parts(header.group(1))
            if table == target:
                return number
            continue
        key = _KEY_RE.match(line)
        if key is None:
            continue
        in_multiline = (line.count('"""') + line.count("'''")) % 2 == 1
        full = table + _key_parts(key.group(1))
        if full == target:
            return number
        # A key set as `load = { ... }` is inside that line; a [table] header alone
        # would be too vague a pointer.
        if target[: len(full)] == full and (enclosing is None or len(full) > enclosing[0]):
            enclosing = (len(full), number)
    return enclosing[1] if enclosing else None


def _with_line(text: str, dotted: str, problem: str) -> str:
    line = _find_line(text, dotted)
    return f"line {line}: {problem}" if line is not None else problem


_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _syntax_problem(error: tomllib.TOMLDecodeError, text: str) -> str:
    message = str(error)
    if message.endswith(" (at end of document)"):
        what = message.removesuffix(" (at end of document)")
        return f"line {max(1, len(text.splitlines()))} (end of file): not valid TOML: {what}"
    where = _TOML_POSITION_RE.search(message)
    if where is None:
        return f"not valid TOML: {message}"
    what = message[: where.start()]
    return f"line {where.group(1)}, column {where.group(2)}: not valid TOML: {what}"


# ---------------------------------------------------------------- entry points


def parse_config(text: str, source: str | None = None) -> Config:
    """A Config from TOML text; ConfigError lists every problem (source names the file)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_problem(error, text)], path=source) from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise ConfigError([f"not valid TOML: {str(error)[:100]}"], path=source) from None
    except RecursionError:
        raise ConfigError(
            ["not valid TOML: arrays or tables nested too deeply"], path=source
        ) from None

    found: list[tuple[str, str]] = []
    good = _check_table(data, _SCHEMA, "", found)
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
        raise ConfigError([_with_line(text, key, problem) for key, problem in found], path=source)

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
