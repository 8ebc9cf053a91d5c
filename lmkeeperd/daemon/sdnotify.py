"""systemd's notify protocol (sd_notify(3)) without libsystemd.

The service manager passes a datagram socket in ``$NOTIFY_SOCKET``; each notification is one
datagram of ``KEY=value`` lines. Outside systemd (launchd, a terminal) the variable is unset
and every method is a no-op, so the daemon calls them unconditionally.

Sending never raises and never blocks the event loop: the socket is non-blocking, and a failure
is logged once as a warning (then at debug level), because a lost notification must not take
the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


class Notifier:
    """Sends notifications to the service manager, or does nothing when there is none."""

    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        """`address` is a socket path, or an abstract name starting with NUL; None disables."""
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if raw.startswith("/"):
            address = raw
        elif raw.startswith("@") and len(raw) > 1:
            address = "\0" + raw[1:]
        elif raw:
            # systemd also knows vsock: addresses (for VMs); lmkeeperd has no use for them.
            log.warning("sd_notify_unsupported_socket", notify_socket=raw)
        return cls(
            address,
            watchdog_usec=_positive_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        """Send ``KEY=value`` lines in one datagram: ``notify(READY=1, STATUS="serving")``."""
        if self._address is None or not fields:
            return
        # A newline inside a value would start a bogus line of its own.
        self.send(
            "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        )

    def send(self, message: str) -> None:
        """Send `message` as it is (already ``KEY=value`` lines)."""
        address = self._address
        if address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode("utf-8", "replace"), address)
        except OSError as e:
            shown = address.replace("\0", "@", 1)
            if self._warned:
                log.debug("sd_notify_failed", notify_socket=shown, error=str(e))
            else:
                self._warned = True
                log.warning("sd_notify_failed", notify_socket=shown, error=str(e))

    def ready(self, status: str | None = None) -> None:
        """Startup finished (and, after `reloading`, the reload finished)."""
        if status is None:
            self.notify(READY=1)
        else:
            self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def watchdog(self) -> None:
        self.notify(WATCHDOG=1)

    def reloading(self) -> None:
        """A reload starts (Type=notify-reload); call `ready` when it is done."""
        if self._address is None:
            return
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def stopping(self) -> None:
        self.notify(STOPPING=1)

    def watchdog_interval(self) -> float | None:
        """How often to call `watchdog`, in seconds (half systemd's timeout), or None.

        None when no watchdog is configured, when it is meant for another process, or when
        there is no socket to send the pings to.
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000


def _positive_int(raw: str | None) -> int | None:
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None
