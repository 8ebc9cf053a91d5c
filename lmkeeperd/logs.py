"""Logging setup: structlog to stdout, one line per event.

JSON when stdout is not a terminal (journald, launchd, pipes), pretty console
lines on a terminal, `[log] format` to force either. When stdout is the
systemd journal (`$JOURNAL_STREAM` names stdout's device and inode), each
line starts with its syslog priority (`<3>`, `<4>`, `<6>`, `<7>`), which
journald strips and records, so that `journalctl -p warning` works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR
_SYSLOG_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


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
    if fmt == "json" or (fmt == "auto" and not tty):
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    if stdout_is_journal(out):
        renderer = _JournalPrefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_Unbreakable(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # httpx logs every request at INFO; that is noise in a daemon's log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
