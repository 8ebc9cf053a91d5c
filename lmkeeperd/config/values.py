"""The value checks of the config: one function per kind of value.

Each check takes the raw TOML value and returns the value to store, or raises `Invalid`
saying what is wrong without naming the key: `schema.check_table` adds the key (and
`loading` the line), so one check serves every key of its kind.

A value that might be the API token is never echoed in a message (`show`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from lmkeeperd.config.types import MAX_DURATION_S
from lmkeeperd.errors import ConfigError
from lmkeeperd.net import SOCKET_PATH_MAX, socket_path_size, split_listen


class Invalid(Exception):
    """A value is wrong; the message says how, without the key (added by the caller).

    Control flow inside this package, not an error of lmkeeperd's tree (errors.py): it
    never leaves `schema.check_table`, which turns it into one line of a `ConfigError`.
    """


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


def show(value: object) -> str:
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


def _expected(what: str, value: object) -> Invalid:
    return Invalid(f"expected {what}, got {show(value)}")


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
            raise Invalid(f"{show(value)} is too long (at most 30 days)") from None
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
        raise Invalid(f"{show(value)} is too long (at most 30 days)")
    return seconds


def non_negative_duration(value: object) -> float:
    seconds = _signed_duration(value)
    if seconds < 0:
        raise Invalid(f"must not be negative, got {show(value)}")
    return seconds + 0.0  # turns -0.0 into 0.0


def positive_duration(value: object) -> float:
    seconds = _signed_duration(value)
    if seconds <= 0:
        raise Invalid(f"must be longer than 0, got {show(value)}")
    return seconds


def idle_duration(value: object) -> float:
    # Lifecycle L11: "0 or less disables idle eject"; one spelling of "off" is enough.
    return max(0.0, _signed_duration(value))


def parse_duration(value: object, key: str) -> float:
    """Seconds from `"300ms"`, `"2s"`, `"10m"`, `"1h"`, `"0"` or a plain number of seconds.

    Raises ConfigError naming `key` for anything else, including negative values.
    """
    try:
        return non_negative_duration(value)
    except Invalid as problem:
        raise ConfigError([f"{key}: {problem}"]) from None


# ---------------------------------------------------------------- other value checks


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def trimmed_string(value: object) -> str:
    return _string(value).strip()


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("true/false", value)
    return value


def positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("a whole number", value)
    if value <= 0:
        raise Invalid(f"must be greater than 0, got {value}")
    return value


def model_keys(value: object) -> tuple[str, ...]:
    """An array of model keys (trimmed, each once, in the order given); empty strings refused."""
    if not isinstance(value, list):
        raise _expected(
            'an array of model keys, like ["text-embedding-nomic-embed-text-v1.5"]', value
        )
    keys: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"item {index + 1}: expected a model key (a string), got {show(item)}")
        key = item.strip()
        if not key:
            raise Invalid(f"item {index + 1}: an empty model key")
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected("a number between 0 and 1", value)
    if not 0 < value <= 1:  # NaN fails this too
        raise Invalid(f"must be more than 0 and at most 1, got {show(value)}")
    return float(value)


def choice(allowed: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        chosen = _string(value).strip().lower()
        if chosen not in allowed:
            raise Invalid(f"expected one of {', '.join(allowed)}, got {show(value)}")
        return chosen

    return check


def http_url(value: object) -> str:
    url = _string(value).strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise Invalid(f"not a valid URL: {show(url)}") from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: it holds a password. The token goes in an env var instead.
        raise Invalid(
            "must not contain a user name or password; put the API token in the "
            "environment variable named by server.api_token_env"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _expected('an http:// or https:// URL with a host, like "http://127.0.0.1:1234"', url)
    if any(c.isspace() for c in url) or parts.query or parts.fragment:
        raise Invalid(
            f"must be a plain http(s) URL without spaces, query or fragment, got {show(url)}"
        )
    return url.rstrip("/")


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _looks_like_token(text: str) -> bool:
    if not _ENV_NAME_RE.fullmatch(text):
        return len(text) >= 12 or text.startswith("sk-")
    # Env var names are words joined by '_'; a long mixed-case, digit-laden run is a key.
    mixed = any(c.islower() for c in text) and any(c.isupper() for c in text)
    return len(text) >= 32 and "_" not in text and mixed and any(c.isdigit() for c in text)


def env_name(value: object) -> str:
    # Never echo the value: people paste the token itself here.
    if not isinstance(value, str):
        raise Invalid("expected the name of an environment variable, like LM_API_TOKEN")
    name = value.strip()
    if _looks_like_token(name):
        raise Invalid(
            "api_token_env names the environment variable that holds the token, "
            "not the token itself (for example LM_API_TOKEN)"
        )
    if not _ENV_NAME_RE.fullmatch(name):
        raise Invalid(
            "expected the name of an environment variable, like LM_API_TOKEN "
            "(letters, digits and _, not starting with a digit)"
        )
    return name


def socket_path(value: object) -> str:
    raw = _string(value).strip()
    if not raw:
        return ""
    if "\0" in raw:
        raise Invalid("must not contain a NUL character")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:
        raise Invalid(f"cannot expand ~ in {show(raw)}: no such home directory") from None
    if not path.is_absolute():
        raise Invalid(f"must be an absolute path (or start with ~/), got {show(raw)}")
    size = socket_path_size(path)
    if size > SOCKET_PATH_MAX:
        raise Invalid(
            f"is {size} bytes long; Unix socket paths can have at most {SOCKET_PATH_MAX} here"
        )
    return str(path)


def models_dir(value: object) -> str:
    raw = _string(value).strip()
    if not raw:
        return ""
    try:
        return str(Path(raw).expanduser())
    except RuntimeError:
        raise Invalid(f"cannot expand ~ in {show(raw)}: no such home directory") from None


def listen(value: object) -> str:
    raw = _string(value).strip()
    if not raw:
        return ""
    try:
        split_listen(raw)
    except ValueError as e:
        raise Invalid(f'{e}, or "" for off') from None
    return raw


def size_or_unset(value: object) -> int | None:
    """A size like "12GB" that must be more than 0; "" leaves it unset (None)."""
    if not isinstance(value, str):
        raise _expected('a size like "12GB" or "16GiB", or "" for unset', value)
    size = size_or_off(value)
    if size is not None and size <= 0:
        raise Invalid(f"must be more than 0, got {show(value)}")
    return size


def size_or_off(value: object) -> int | None:
    """A size like "2GB" or "512MiB"; "" turns the feature off."""
    if not isinstance(value, str):
        raise _expected('a size like "2GB" or "512MiB", or "" for off', value)
    if not value.strip():
        return None
    from lmkeeperd.memory.sizes import parse_size  # stdlib-only module

    try:
        return parse_size(value)
    except ValueError as e:
        raise Invalid(str(e)) from None
