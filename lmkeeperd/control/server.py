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

Slow subscribers never slow the daemon: each has a bounded queue; `publish` never blocks and
drops the event for a subscriber whose queue is full, counting it. When the subscriber catches
up, it first receives ``{"event": "events_dropped", "count": N}`` (an extension of the event
list in interface.md) so it knows to re-read the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import stat
import struct
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

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
from lmkeeperd.errors import DaemonError, LmkeeperError, ProtocolError, SocketInUse
from lmkeeperd.listening import ConnectionCap, GuardedStreamProtocol, Refuse, Slot
from lmkeeperd.net import SOCKET_PATH_MAX, socket_path_size

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

# struct ucred (Linux): pid, uid, gid.
_UCRED = struct.Struct("3i")
# struct xucred (macOS): cr_version, cr_uid, cr_ngroups, cr_groups[16].
_XUCRED = struct.Struct("IIh16I")
_XUCRED_VERSION = 0
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1
_LOCAL_PEERPID = 2


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


@dataclass(slots=True, eq=False)
class _Subscriber:
    conn_id: int
    queue: asyncio.Queue[bytes]
    missed: int = 0
    """Events dropped since the last one that got through."""


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
    ) -> None:
        if subscriber_queue < 2:
            # One slot for a pending event plus one for the events_dropped marker before it.
            raise ValueError("subscriber_queue must be at least 2")
        self._path = Path(path)
        self._handler = handler
        self._queue_size = subscriber_queue
        self._allowed_uids = (
            frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.getuid(), 0})
        )
        self._server: asyncio.Server | None = None
        self._socket_identity: tuple[int, int] | None = None
        self._ids = itertools.count(1)
        self._clients: dict[int, _Client] = {}
        self._subscribers: set[_Subscriber] = set()
        self._dropped = 0
        self._closing = False
        self.cap = ConnectionCap("control", max_connections)
        self._first_line_timeout = first_line_timeout

    @property
    def path(self) -> Path:
        return self._path

    @property
    def dropped_events(self) -> int:
        """Events dropped for slow subscribers since start, over all subscribers."""
        return self._dropped

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
        sock = self._bind()
        try:
            # A full backlog makes a client's connect fail at once (EAGAIN on a Unix socket),
            # not wait; asyncio's default of 100 filled up under bursts of connections
            # (tests/test_fuzz_socket.py). The kernel caps this at net.core.somaxconn.
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
            self._remove_socket_file()
            raise
        log.info("control_listening", path=str(self._path))

    def publish(self, event: Mapping[str, Any]) -> None:
        """Send `event` to every subscriber; never blocks. Call from the event loop's thread."""
        if not self._subscribers:
            return
        try:
            data = encode(event)
        except (TypeError, ValueError) as e:
            log.error("control_error", error=f"event is not plain JSON: {e}")
            return
        for subscriber in self._subscribers:
            self._offer(subscriber, data)

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
        self._remove_socket_file()
        log.info("control_closed", path=str(self._path))

    # --- binding -------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        path = self._path
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
        self._socket_identity = (st.st_dev, st.st_ino)
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

    def _remove_socket_file(self) -> None:
        identity, self._socket_identity = self._socket_identity, None
        if identity is None:
            return
        try:
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) != identity:
                # Someone (a newer daemon, the user) put something else there: not ours.
                log.warning("control_socket_replaced", path=str(self._path))
                return
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("control_socket_not_removed", path=str(self._path), error=str(e))

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
                await self._stream_events(conn, reader, writer)
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

    # --- subscriptions -------------------------------------------------------------------

    async def _stream_events(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        subscriber = _Subscriber(conn.id, asyncio.Queue(self._queue_size))
        # Registered before the reply, so no event published after the reply is missed.
        self._subscribers.add(subscriber)
        try:
            await self._send(conn, writer, {"ok": True})
            pump = asyncio.create_task(self._pump(subscriber, writer))
            until_eof = asyncio.create_task(_discard_until_eof(reader))
            try:
                done, _ = await asyncio.wait({pump, until_eof}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pump.cancel()
                until_eof.cancel()
                await asyncio.gather(pump, until_eof, return_exceptions=True)
                if self._closing:
                    # Hand what is still queued to the transport; closing flushes it.
                    while not subscriber.queue.empty():
                        writer.write(subscriber.queue.get_nowait())
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            self._subscribers.discard(subscriber)

    @staticmethod
    async def _pump(subscriber: _Subscriber, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(await subscriber.queue.get())
            await writer.drain()

    def _offer(self, subscriber: _Subscriber, data: bytes) -> None:
        queue = subscriber.queue
        if subscriber.missed:
            # The marker must go before this event, so both need room.
            if queue.maxsize - queue.qsize() < 2:
                self._drop(subscriber)
                return
            queue.put_nowait(encode({"event": "events_dropped", "count": subscriber.missed}))
            subscriber.missed = 0
        if queue.full():
            self._drop(subscriber)
            return
        queue.put_nowait(data)

    def _drop(self, subscriber: _Subscriber) -> None:
        if not subscriber.missed:
            log.warning("control_events_dropped", conn=subscriber.conn_id)
        subscriber.missed += 1
        self._dropped += 1


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(MAX_LINE):
        pass


_OVER_CAP = encode(
    {
        "ok": False,
        "error": "the daemon has too many control connections open (every one busy); "
        "try again shortly",
    }
)


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
