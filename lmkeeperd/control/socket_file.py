"""The control socket's file: its path checked, its folder made private, a stale one cleared,
bound with mode 0600, and removed at the end only while it is still ours.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

import structlog

from lmkeeperd.control.peer import peer_credentials
from lmkeeperd.errors import DaemonError, SocketInUse
from lmkeeperd.net import SOCKET_PATH_MAX, socket_path_size

log = structlog.get_logger()


class SocketFile:
    """The socket file at `path`, from `bind` to `remove`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # (st_dev, st_ino) of the file `bind` created: what `remove` may delete.
        self._identity: tuple[int, int] | None = None

    def bind(self) -> socket.socket:
        """A socket bound at the path, not yet listening.

        Raises `DaemonError` when the path is unusable and `SocketInUse` when another live
        daemon answers on it.
        """
        path = self.path
        raw = os.fsencode(path)
        size = socket_path_size(raw)
        if size > SOCKET_PATH_MAX:
            raise DaemonError(
                f"control socket path is too long: {path} is {size} bytes, but this system "
                f"allows at most {SOCKET_PATH_MAX}; set [control] socket to a shorter path"
            )
        self._ensure_folder(path.parent)
        self._clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # The umask makes bind() create the file as 0600 in one step, so there is no moment
            # when another user could connect. The alternatives are worse: chmod after bind
            # leaves such a window, and bind-to-a-temp-name-then-rename would silently replace
            # whatever appeared at the path meanwhile. The umask is process-wide, but only for
            # this one call, and it can only make a concurrently created file stricter.
            old_umask = os.umask(0o177)
            try:
                sock.bind(raw)
            finally:
                os.umask(old_umask)
            st = os.lstat(path)
        except OSError as e:
            sock.close()
            raise DaemonError(
                f"cannot create the control socket at {path}: {e.strerror or e}"
            ) from None
        self._identity = (st.st_dev, st.st_ino)
        return sock

    @staticmethod
    def _ensure_folder(folder: Path) -> None:
        """Create the socket's folder (and missing parents) as 0700; leave existing ones be.

        An existing folder's mode is not touched: it may be shared (/tmp) or deliberately
        configured, and the socket's own 0600 mode plus the peer check protect it. A folder
        owned by another user is refused, since that user could replace our socket.
        """
        missing: list[Path] = []
        current = folder
        while not os.path.lexists(current) and current != current.parent:
            missing.append(current)
            current = current.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                continue
            except OSError as e:
                raise DaemonError(
                    f"cannot create folder {d} for the control socket: {e.strerror or e}"
                ) from None
            # mkdir's mode passes through the umask; make it exactly 0700.
            os.chmod(d, 0o700)
        try:
            st = os.stat(folder)
        except OSError as e:
            raise DaemonError(
                f"cannot use folder {folder} for the control socket: {e.strerror or e}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise DaemonError(
                f"{folder} is not a folder; set [control] socket to a path in a folder"
            )
        if st.st_uid not in (os.getuid(), 0):
            raise DaemonError(
                f"folder {folder} belongs to uid {st.st_uid}, who could replace the control "
                "socket; set [control] socket to a path in a folder you own"
            )

    @staticmethod
    def _clear_stale_socket(path: Path) -> None:
        """Remove a socket left by a crashed daemon; refuse a live one or any other file."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise DaemonError(f"cannot check {path}: {e.strerror or e}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise DaemonError(
                f"{path} exists and is not a socket; lmkeeperd will not replace it. Remove it, "
                "or set [control] socket to another path"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(os.fsencode(path))
            except ConnectionRefusedError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                log.info("control_stale_socket_removed", path=str(path))
                return
            except FileNotFoundError:
                return
            except TimeoutError:
                raise SocketInUse(
                    f"another lmkeeperd is already running on {path} (it accepts connections "
                    "but is not keeping up)"
                ) from None
            except OSError as e:
                raise DaemonError(
                    f"cannot check the existing socket at {path}: {e.strerror or e}"
                ) from None
            _uid, pid = peer_credentials(probe)
        owner = f" (pid {pid})" if pid else ""
        raise SocketInUse(f"another lmkeeperd is already running on {path}{owner}")

    def remove(self) -> None:
        """Remove the file `bind` created, unless something else has taken its place."""
        identity, self._identity = self._identity, None
        if identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) != identity:
                # Someone (a newer daemon, the user) put something else there: not ours.
                log.warning("control_socket_replaced", path=str(self.path))
                return
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("control_socket_not_removed", path=str(self.path), error=str(e))
