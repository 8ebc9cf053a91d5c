"""`lmkeeperd select MODEL --wait`: select, then wait for the load's outcome.

Two connections: a subscription, opened first so that no outcome can slip by
between the selection and the watching, and a request connection for the
selection and for `status` (asked every `_POLL_S` for the progress line and for
the cases events alone do not settle: the model was loaded already, someone
selected another one). Exit 0 when the model is loaded; 1 when its load failed,
the selection was superseded, lmkeeperd is hands-off, or `--timeout` passed.

On a terminal (stderr) a one-line progress shows the phase and the elapsed
time, redrawn in place; otherwise nothing is printed but the result.
"""

from __future__ import annotations

import select as selector
import sys
import time

from lmkeeperd.cli.output import NO_DAEMON, OK, REFUSED, error, memory_warning, refusal, warning
from lmkeeperd.control.client import ControlClient
from lmkeeperd.errors import DaemonError, DaemonNotRunning, LmkeeperError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_POLL_S = 0.2
_ADVISORY_WAIT_S = 1.0
_HELD = frozenset({"loaded", "streaming"})


class _Outcome(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def select_and_wait(
    sock: str,
    obj: dict[str, Any],
    key: str,
    limit: float | None,
    *,
    no_daemon: Callable[[DaemonNotRunning], object] | None = None,
) -> int:
    """Select and wait; `no_daemon` says why nothing answered (default: the error alone)."""
    started = time.monotonic()
    progress = _Progress(sys.stderr.isatty())
    try:
        with ControlClient(sock) as events, ControlClient(sock) as ctl:
            ack = events.request({"op": "subscribe"})
            if ack.get("ok") is not True:
                raise _Outcome(REFUSED, f"cannot follow the load: {ack.get('error', ack)}")
            reply = ctl.request(obj)
            if reply.get("ok") is not True:
                raise _Outcome(REFUSED, refusal(reply))
            if reply.get("ignored"):
                raise _Outcome(REFUSED, f"the daemon ignored the selection: {reply['ignored']}")
            memory_warning(reply)
            # The load's own advisory is computed beside it (L12) and may come just after
            # the load: worth a short wait when the selection's verdict foretold it.
            memory = reply.get("memory") or {}
            advisory_wait = _ADVISORY_WAIT_S if memory.get("verdict") == "may not fit" else 0.0
            _watch(events, ctl, key, started, limit, progress, advisory_wait)
    except _Outcome as outcome:
        progress.clear()
        if outcome.code == OK:
            print(outcome.message)
        else:
            error(f"select: {outcome.message}")
        return outcome.code
    except DaemonNotRunning as e:
        progress.clear()
        if no_daemon is None:
            error(str(e))
        else:
            no_daemon(e)
        return NO_DAEMON
    except (LmkeeperError, OSError) as e:
        progress.clear()
        error(f"select: {e}")
        return REFUSED
    except KeyboardInterrupt:
        progress.clear()
        return 130
    raise AssertionError("unreachable: _watch ends with an outcome")  # pragma: no cover


def _watch(
    events: ControlClient,
    ctl: ControlClient,
    key: str,
    started: float,
    limit: float | None,
    progress: _Progress,
    advisory_wait: float = 0.0,
) -> None:
    advised: list[bool] = []
    while True:
        status: dict[str, Any] = ctl.request({"op": "status"}).get("status", {})
        elapsed = time.monotonic() - started
        try:
            _settled(status, key, elapsed)
        except _Outcome as outcome:
            if outcome.code == OK and not advised:
                _late_advisory(events, key, progress, advisory_wait)
            raise
        if limit is not None and elapsed >= limit:
            raise _Outcome(
                REFUSED,
                f"{key} is not loaded after {_secs(limit)} ({_phase(status)}); lmkeeperd goes "
                "on with the load: `lmkeeperd status` follows it, `lmkeeperd unload` stops it",
            )
        progress.show(f"{key}: {_phase(status)}, {_secs(elapsed)}")
        wait = _POLL_S if limit is None else max(0.0, min(_POLL_S, limit - elapsed))
        if not events.has_buffered_line():
            readable, _, _ = selector.select([events.fileno()], [], [], wait)
            if not readable:
                continue
        event = events.read_message()
        if event is None:
            raise DaemonError("lmkeeperd closed the connection (it is stopping?)")
        if _judge(event, key, progress):
            advised.append(True)


def _late_advisory(events: ControlClient, key: str, progress: _Progress, wait: float) -> None:
    """Loaded: print this load's advisory if it is on its way (read for up to `wait` s)."""
    deadline = time.monotonic() + wait
    while True:
        if not events.has_buffered_line():
            left = max(0.0, deadline - time.monotonic())
            readable, _, _ = selector.select([events.fileno()], [], [], left)
            if not readable:
                return
        event = events.read_message()
        if event is None:
            return
        if event.get("event") == "memory_advisory" and event.get("model") == key:
            _judge(event, key, progress)
            return


def _settled(status: dict[str, Any], key: str, elapsed: float) -> None:
    if status.get("engine") not in (None, "lmstudio"):
        raise _Outcome(REFUSED, f"lmkeeperd is hands-off: the engine is {status['engine']}")
    selected = status.get("selected")
    if selected not in (None, key):
        raise _Outcome(REFUSED, f"the selection of {key} was superseded by {selected}")
    if status.get("model") == key and status.get("state") in _HELD and not status.get("pending"):
        raise _Outcome(OK, f"loaded {key} ({_secs(elapsed)})")


def _judge(event: dict[str, Any], key: str, progress: _Progress) -> bool:
    """Raise the outcome `event` settles; True when it was this load's memory advisory."""
    name = event.get("event")
    if name == "memory_advisory" and event.get("model") == key:
        # L12: the check made beside this load, with the memory left after the unload.
        progress.clear()
        warning(f"at load: {event.get('message')}")
        return True
    if name == "load_failed" and event.get("model") == key and not event.get("draft"):
        raise _Outcome(REFUSED, f"loading {key} failed: {event.get('error')}")
    if name == "selection_superseded" and event.get("model") == key:
        raise _Outcome(REFUSED, f"the selection of {key} was superseded by {event.get('by')}")
    return False


def _phase(status: dict[str, Any]) -> str:
    why = status.get("why") or {}
    state = str(status.get("state", "?"))
    waiting = why.get("waiting_for")
    if not waiting or str(waiting).endswith("in flight"):  # "loading" says that already
        return state
    return f"{state}, waiting for {waiting}"


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s"


class _Progress:
    """One line on the terminal, redrawn in place; nothing at all when not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[2K{text}")
            sys.stderr.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._shown = False
