"""Who is at the other end of a connected Unix socket: the peer's uid and pid, from the kernel.

SO_PEERCRED on Linux, LOCAL_PEERCRED (and LOCAL_PEERPID) on macOS. The control server
refuses a peer whose uid is not allowed, or cannot be read (fail closed); the socket file's
stale check names the pid of a daemon still alive on the path.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from typing import Protocol

# struct ucred (Linux): pid, uid, gid.
_UCRED = struct.Struct("3i")
# struct xucred (macOS): cr_version, cr_uid, cr_ngroups, cr_groups[16].
_XUCRED = struct.Struct("IIh16I")
_XUCRED_VERSION = 0
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1
_LOCAL_PEERPID = 2


class _SockOpts(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_credentials(sock: _SockOpts) -> tuple[int | None, int | None]:
    """The (uid, pid) of the process at the other end of a connected Unix socket.

    Either is None when the platform cannot tell.
    """
    try:
        if sys.platform.startswith("linux"):
            pid, uid, _gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            return uid, pid
        if sys.platform == "darwin":
            version, uid, *_ = _XUCRED.unpack(
                sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
            )
            if version != _XUCRED_VERSION:
                return None, None
            peer_pid: int | None = None
            with contextlib.suppress(OSError, struct.error):
                (peer_pid,) = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))
            return uid, peer_pid
    except (OSError, struct.error):
        pass
    return None, None
