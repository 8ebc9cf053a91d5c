"""Logging setup: structlog to stdout, one line per event.

JSON when stdout is not a terminal (journald, launchd, pipes), pretty console
lines on a terminal, `[log] format` to force either. When stdout is the
systemd journal (`$JOURNAL_STREAM` names stdout's device and inode), each
line starts with its syslog priority (`<3>`, `<4>`, `<6>`, `<7>`), which
journald strips and records, so that `journalctl -p warning` works.

Every line carries its time under `time`, in the same form as the events on
the control socket (`2026-01-31T12:00:00.123Z`), so one reader serves both.
Repeated warnings do not flood the log (`RepeatLimit`): within a minute, a
warning or error identical to one already written (same event, same fields) is
counted, not written, and so is any line of an event beyond its first
`PER_EVENT` of the minute; the minute's count is written as one line (the event
with `repeated`, how many were left out, and `repeated_over_s`), at the end of
the minute and every minute the flood goes on. Events that count their own
bursts (`count`, like `accept_failed`) pass as they are.

Console lines are for people: values as values (`draft=false`, `model=-`,
not Python reprs), colour only where term.use_color says so (`NO_COLOR`,
`FORCE_COLOR`), and events that carry a readable `message` (the memory
advisory) shown as that one line; the JSON form keeps every field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from lmkeeperd.term import use_color

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR
_SYSLOG_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
# On the console these events show their `message` alone: it already says, in words,
# what the other fields hold in figures (they stay in the JSON form).
_MESSAGE_ONLY = frozenset({"memory_advisory"})
# Keys structlog's console renderer lays out itself.
_LAYOUT_KEYS = frozenset({"event", "level", "time", "exception", "stack"})
_NEEDS_QUOTES = frozenset(" \t\r\n=\"'")


REPEAT_WINDOW_S = 60.0
PER_EVENT = 5  # lines of one warning event per window; the rest are counted
_LIMITED_LEVELS = frozenset({"warning", "error", "critical"})
_NOT_COMPARED = frozenset({"time", "level", "timestamp"})


class RepeatLimit:
    """A structlog processor: the first of repeated warnings, then a count per minute.

    `clock` is monotonic seconds (tests pass their own); `emit(level, event, fields)`
    writes a summary line (default: through structlog, so it is rendered like the rest).
    """

    def __init__(
        self,
        window: float = REPEAT_WINDOW_S,
        per_event: int = PER_EVENT,
        clock: Any = time.monotonic,
        emit: Any = None,
    ) -> None:
        self._window = window
        self._per_event = per_event
        self._clock = clock
        self._emit = emit or _emit_summary
        self._lock = threading.Lock()
        # event -> [window start, lines written, fingerprints written, left out, last level,
        # last fields]
        self._events: dict[str, list[Any]] = {}

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        level = str(event_dict.get("level", method))
        name = event_dict.get("event")
        if level not in _LIMITED_LEVELS or not isinstance(name, str):
            return event_dict
        if "count" in event_dict or "repeated" in event_dict:
            return event_dict  # counts its own bursts, or is our summary
        fingerprint = _fingerprint(event_dict)
        now = self._clock()
        due: list[tuple[str, str, dict[str, Any], int]] = []
        with self._lock:
            state = self._events.get(name)
            if state is not None and now - state[0] >= self._window:
                if state[3]:
                    due.append((state[4], name, state[5], state[3]))
                state = None
            if state is None:
                state = self._events[name] = [now, 0, set(), 0, level, {}]
            if fingerprint in state[2] or state[1] >= self._per_event:
                state[3] += 1
                state[4] = level
                state[5] = {k: v for k, v in event_dict.items() if k not in _NOT_COMPARED}
                state[5].pop("event", None)
                if state[3] == 1:
                    self._schedule(name, state[0])
                left_out = True
            else:
                state[1] += 1
                state[2].add(fingerprint)
                left_out = False
        for summary in due:
            self._emit(*summary, self._window)
        if left_out:
            raise structlog.DropEvent
        return event_dict

    def flush(self, name: str, started: float) -> None:
        """End `name`'s window begun at `started`: write its count, if any."""
        with self._lock:
            state = self._events.get(name)
            if state is None or state[0] != started:
                return
            del self._events[name]
            summary = (state[4], name, state[5], state[3]) if state[3] else None
        if summary is not None:
            self._emit(*summary, self._window)

    def _schedule(self, name: str, started: float) -> None:
        """The count is due at the window's end: on the loop when there is one, else with
        the next line of the event."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, started + self._window - self._clock())
        loop.call_later(delay, self.flush, name, started)


def _fingerprint(event_dict: Mapping[str, Any]) -> str:
    fields = {k: v for k, v in event_dict.items() if k not in _NOT_COMPARED}
    try:
        return json.dumps(fields, sort_keys=True, default=str)
    except ValueError:
        return repr(sorted(fields.items(), key=lambda item: item[0]))


def _emit_summary(level: str, name: str, fields: dict[str, Any], count: int, window: float) -> None:
    logger = structlog.get_logger()
    getattr(logger, level if level in LEVELS else "warning")(
        name, **fields, repeated=count, repeated_over_s=window
    )


def utc_now() -> str:
    """Now as ISO 8601 UTC with milliseconds and "Z": the `time` of log lines and events."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add_time(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict["time"] = utc_now()
    return event_dict


def _message_only(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Console only: an event with a readable `message` becomes that one line."""
    message = event_dict.get("message")
    if event_dict.get("event") in _MESSAGE_ONLY and isinstance(message, str):
        kept = {key: event_dict[key] for key in _LAYOUT_KEYS if key in event_dict}
        kept["event"] = f"{event_dict['event']}: {message}"
        event_dict.clear()
        event_dict.update(kept)
    return event_dict


def people_value(value: Any) -> str:
    """One value for a console line: a plain word as it is, None as "-", the rest as JSON
    (a string with spaces in double quotes), never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, str) and value and not _NEEDS_QUOTES.intersection(value):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except ValueError:  # a circular structure: say something rather than fail the line
        return str(value)


class _PeopleRenderer(structlog.dev.ConsoleRenderer):
    """structlog's console renderer, with values shown by `people_value`."""

    def _repr(self, val: Any) -> str:
        return people_value(val)


def stdout_is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is the journal connection systemd gave us (sd_journal_stream)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class _JournalPrefix:
    """Wraps the final renderer and prefixes the line with its syslog priority."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        priority = _SYSLOG_PRIORITY.get(str(event_dict.get("level", method)), 6)
        return f"<{priority}>{self._renderer(logger, method, event_dict)}"


class _Unbreakable:
    """A stream whose write never raises: a closed pipe on stdout (the reader of the
    log went away) must not stop the daemon, nor leave its socket behind."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and quiet the stdlib loggers of our dependencies)."""
    out = stream or sys.stdout
    tty = hasattr(out, "isatty") and out.isatty()
    renderer: Any
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        RepeatLimit(),
        _add_time,
        structlog.processors.format_exc_info,
    ]
    if fmt == "json" or (fmt == "auto" and not tty):
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        processors.append(_message_only)
        renderer = _PeopleRenderer(colors=use_color(out), timestamp_key="time")
    if stdout_is_journal(out):
        renderer = _JournalPrefix(renderer)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_Unbreakable(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # httpx logs every request at INFO; that is noise in a daemon's log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
