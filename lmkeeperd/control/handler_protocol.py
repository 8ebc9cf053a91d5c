"""Between the control server and the daemon: the `RequestHandler` the daemon provides, and
the `Connection` each request comes from (its peer, and the key the daemon files streams under).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lmkeeperd.control.protocol import Request


@dataclass(frozen=True, slots=True, eq=False)
class Connection:
    """One client connection, as the handler sees it (compared and hashed by identity)."""

    id: int
    """Unique within the server's life, increasing."""
    peer_uid: int | None
    peer_pid: int | None = None


class RequestHandler(Protocol):
    """What the daemon provides to answer requests."""

    async def handle(self, conn: Connection, request: Request) -> dict[str, Any]:
        """Answer one request with the reply object (``{"ok": True, ...}``).

        May raise `LmkeeperError`: the client then gets ``{"ok": false, "error": str(e)}``.
        Never called with `Subscribe`.
        """
        ...

    def connection_closed(self, conn: Connection) -> None:
        """`conn` is gone: end the streams it opened (lifecycle L8). Called exactly once."""
        ...
