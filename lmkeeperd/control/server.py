"""The daemon's end of the control socket: an asyncio Unix-domain socket server.

Theory of operation
-------------------
`ControlServer.start` checks the socket path (length, folder, what is already there), binds
with mode 0600 and listens. Every accepted connection runs in its own task:

1. The peer's uid is read from the kernel (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS).
   A uid outside `allowed_uids` (default: the daemon's own uid and root) gets one
   ``permission denied`` reply and is closed; the handler never sees that connection. A peer
   whose uid cannot be read is refused too: fail closed.
2. Lines are read with a bounded buffer (`MAX_LINE`), parsed by `protocol.parse_request`, and
   handed to the `RequestHandler` one at a time, so replies leave in request order. Other
   connections run concurrently, so a slow request (``unload`` answers once unloaded) holds up
   only its own connection.
3. Frame errors (line too long, not JSON, not an object) get an error reply and the connection
   is closed; request errors (unknown op, bad field) get an error reply and the connection goes
   on. An exception escaping the handler is logged as ``control_error`` and answered with an
   internal error; nothing one connection does reaches the server or other connections.
4. ``subscribe`` is answered by the server itself. From then on the connection only carries
   events, one JSON line each, from `publish`; anything the client sends afterwards is read and
   ignored (replies interleaved with events would be ambiguous; open a second connection for
   requests). The subscription ends when the client closes.
5. When a connection the handler could have seen ends (EOF, error, refusal excluded, server
   close), `RequestHandler.connection_closed` is called exactly once, so the daemon can end
   the streams that connection opened (lifecycle L8).

Limits (lmkeeperd/listening.py): at most `max_connections` connections. A connection is
*idle* while it waits for a request line and holds no stream (by the replies to its
``stream_start`` and ``stream_end``) and no subscription; a newcomer over the cap takes the place
of the one idle the longest, which is closed, and only when none is idle is the newcomer sent
one error line and closed. A connection's first line must arrive within `first_line_timeout`
seconds; after that a connection may stay silent as long as it likes (a stream holder does).

Slow subscribers never slow the daemon: each has a bounded queue (subscribers.py). The socket
file's life (path checks, folder modes, stale sockets, removal) is socket_file.py's; reading
the peer's uid and pid is peer.py's.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from lmkeeperd.control.handler_protocol import Connection as Connection
from lmkeeperd.control.handler_protocol import RequestHandler as RequestHandler
from lmkeeperd.control.peer import peer_credentials
from lmkeeperd.control.protocol import (
    MAX_LINE,
    FrameError,
    Request,
    StreamEnd,
    StreamStart,
    Subscribe,
    encode,
    line_too_long_message,
    parse_request,
)
from lmkeeperd.control.socket_file import SocketFile
from lmkeeperd.control.socket_record import Recorder
from lmkeeperd.control.subscribers import Subscribers
from lmkeeperd.errors import LmkeeperError, ProtocolError
from lmkeeperd.listening import ConnectionCap, GuardedStreamProtocol, Refuse, Slot

# Imported from here by the tests: the limit the socket path is checked against.
from lmkeeperd.net import SOCKET_PATH_MAX as SOCKET_PATH_MAX

log = structlog.get_logger()

# How long closing a connection may wait for its last reply to reach a client that does not
# read; after that the connection is dropped hard.
_FLUSH_TIMEOUT_S = 2.0

# Connections held at most (well below systemd's soft `ulimit -n` of 1024).
MAX_CONNECTIONS = 128
# A connection must send its first request line within this long.
FIRST_LINE_TIMEOUT_S = 10.0
# Connections accepted per wake-up of the loop: asyncio accepts up to the listen backlog
# at once, and a burst of thousands would take as many descriptors before any is refused.
_ACCEPT_BATCH = 100


@dataclass(slots=True, eq=False)
class _Client:
    conn: Connection
    writer: asyncio.StreamWriter
    task: asyncio.Task[Any] | None


class ControlServer:
    """Serves the control protocol on a Unix socket at `path` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        handler: RequestHandler,
        *,
        subscriber_queue: int = 256,
        allowed_uids: Collection[int] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        first_line_timeout: float = FIRST_LINE_TIMEOUT_S,
        record: Recorder | None = None,
    ) -> None:
        self._path = Path(path)
        # Where the CLI finds this socket when the config file cannot tell (socket_record.py).
        self._record = record
        self._handler = handler
        self._subscribers = Subscribers(subscriber_queue, closing=lambda: self._closing)
        self._allowed_uids = (
            frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.getuid(), 0})
        )
        self._server: asyncio.Server | None = None
        self._socket_file = SocketFile(self._path)
        self._ids = itertools.count(1)
        self._clients: dict[int, _Client] = {}
        self._closing = False
        self.cap = ConnectionCap("control", max_connections)
        self._first_line_timeout = first_line_timeout

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dropped_events(self) -> int:
        """Events dropped for slow subscribers since start, over all subscribers."""
        return self._subscribers.dropped

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def connections(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        """Create the socket and start accepting connections.

        Raises `DaemonError` when the path is unusable and `SocketInUse` when another live
        daemon answers on it.
        """
        if self._server is not None or self._closing:
            raise RuntimeError("ControlServer.start() may be called only once")
        sock = self._socket_file.bind()
        try:
            # A full backlog makes a client's connect fail at once (EAGAIN on a Unix socket),
            # not wait; asyncio's default of 100 filled up under bursts of connections
            # (tests/control/test_fuzz_socket.py). The kernel caps this at net.core.somaxconn.
            loop = asyncio.get_running_loop()

            def protocol() -> GuardedStreamProtocol | Refuse:
                slot = self.cap.admit()
                if slot is None:
                    return Refuse(_OVER_CAP)
                reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
                return GuardedStreamProtocol(reader, self._serve_client, loop, slot)

            self._server = await loop.create_unix_server(protocol, sock=sock, backlog=_ACCEPT_BATCH)
            # asyncio's backlog is also its accept batch (above); the kernel's queue may be
            # longer. listen() again on a listening socket only changes its backlog.
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            self._socket_file.remove()
            raise
        log.info("control_listening", path=str(self._path))
        if self._record is not None:
            problem = self._record.write(str(self._path))
            if problem is not None:
                log.warning("socket_record_failed", path=self._record.path, error=problem)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Send `event` to every subscriber; never blocks. Call from the event loop's thread."""
        self._subscribers.publish(event)

    async def close(self, *, flush_timeout: float = 0.5) -> None:
        """Stop accepting, end every connection, remove the socket file if it is still ours.

        Replies and events already on their way get up to `flush_timeout` seconds to reach
        clients that read them (so subscribers see the daemon's last events); connections
        still not done then are dropped. Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        current = asyncio.current_task()
        clients = [
            c for c in self._clients.values() if c.task is not None and c.task is not current
        ]
        tasks = [c.task for c in clients if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=flush_timeout)
            for client in clients:
                if client.task in late:
                    # A client that does not read must not hold up shutdown.
                    client.writer.transport.abort()
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self.cap.close()
        if self._record is not None:
            self._record.remove()
        self._socket_file.remove()
        log.info("control_closed", path=str(self._path))

    # --- connections ---------------------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.transport.abort()
            return
        uid, pid = peer_credentials(writer.get_extra_info("socket"))
        conn = Connection(id=next(self._ids), peer_uid=uid, peer_pid=pid)
        self._clients[conn.id] = _Client(conn, writer, asyncio.current_task())
        log.debug("control_connected", conn=conn.id, peer_uid=uid, peer_pid=pid)
        try:
            if uid not in self._allowed_uids:
                await self._refuse(conn, writer)
                return
            try:
                protocol = writer.transport.get_protocol()
                slot = protocol.slot if isinstance(protocol, GuardedStreamProtocol) else None
                await self._converse(conn, reader, writer, slot)
            finally:
                self._notify_closed(conn)
        except (ConnectionError, TimeoutError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # close() cancels us; ending normally then keeps asyncio's stream machinery from
            # logging the cancelled task as an unhandled error (Python 3.11 and 3.12 do).
            if not self._closing:
                raise
        except Exception as e:
            log.error("control_error", conn=conn.id, error=repr(e), exc_info=True)
        finally:
            del self._clients[conn.id]
            await self._close_writer(writer)
            log.debug("control_disconnected", conn=conn.id)

    async def _refuse(self, conn: Connection, writer: asyncio.StreamWriter) -> None:
        log.warning(
            "control_peer_refused", conn=conn.id, peer_uid=conn.peer_uid, peer_pid=conn.peer_pid
        )
        if conn.peer_uid is None:
            error = "permission denied: cannot determine the uid of the connecting process"
        else:
            error = (
                f"permission denied: uid {conn.peer_uid} may not use this socket (it accepts "
                "only the daemon's own user and root)"
            )
        await self._send(conn, writer, {"ok": False, "error": error})

    async def _converse(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: Slot | None,
    ) -> None:
        streams = 0  # open streams of this connection, as the replies tell
        first = True
        while True:
            if slot is not None and streams == 0:
                slot.idle()
            try:
                if first:
                    async with asyncio.timeout(self._first_line_timeout):
                        line = await reader.readuntil(b"\n")
                    first = False
                else:
                    line = await reader.readuntil(b"\n")
            except TimeoutError:
                return  # said nothing: frees its place (it holds nothing)
            except asyncio.IncompleteReadError:
                return  # EOF, possibly in the middle of a line: nothing to answer
            except asyncio.LimitOverrunError:
                await self._send(conn, writer, _error(line_too_long_message()))
                return
            try:
                request = parse_request(line)
            except FrameError as e:
                await self._send(conn, writer, _error(str(e)))
                return
            except ProtocolError as e:
                await self._send(conn, writer, _error(str(e)))
                continue
            if slot is not None:
                slot.busy()
            if isinstance(request, Subscribe):
                await self._subscribers.serve(conn.id, reader, writer)
                return
            reply = await self._call_handler(conn, request)
            if reply.get("ok") is True:
                if isinstance(request, StreamStart):
                    streams += 1
                elif isinstance(request, StreamEnd):
                    streams = max(0, streams - 1)
            await self._send(conn, writer, reply)

    async def _call_handler(self, conn: Connection, request: Request) -> Mapping[str, Any]:
        try:
            return await self._handler.handle(conn, request)
        except LmkeeperError as e:
            return _error(str(e) or type(e).__name__)
        except Exception as e:
            log.error("control_error", conn=conn.id, op=request.op, error=repr(e), exc_info=True)
            return _error(f"internal error while handling {request.op} (see the daemon's log)")

    def _notify_closed(self, conn: Connection) -> None:
        try:
            self._handler.connection_closed(conn)
        except Exception as e:
            log.error("control_error", conn=conn.id, error=repr(e), exc_info=True)

    async def _send(
        self, conn: Connection, writer: asyncio.StreamWriter, reply: Mapping[str, Any]
    ) -> None:
        try:
            data = encode(reply)
        except (TypeError, ValueError) as e:
            log.error("control_error", conn=conn.id, error=f"reply is not plain JSON: {e}")
            data = encode(_error("internal error: the reply could not be encoded"))
        writer.write(data)
        await writer.drain()

    @staticmethod
    async def _close_writer(writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _FLUSH_TIMEOUT_S)
        except TimeoutError:
            writer.transport.abort()
        except Exception:
            pass  # the connection is gone either way


_OVER_CAP = encode(
    {
        "ok": False,
        "error": "the daemon has too many control connections open (every one busy); "
        "try again shortly",
    }
)


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
