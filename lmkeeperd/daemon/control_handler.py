"""Requests on the control socket, turned into core events (the `RequestHandler`).

The control server (lmkeeperd/control/server.py) reads and checks each frame
and calls `handle`; this module decides what a request means for the core:

- `select`: checked against the server's catalog first (L23,
  selection_check.py), then stored for the next start and `Select`; the
  memory verdict (L12) only for a model that will load: a resident (L24) loads
  nothing, and the memory it takes would count against it;
- `activity`, `engine`: `Activity` (for the model it names, else the current
  one, L24), `EngineChanged`;
- `stream_start` / `stream_end`: streams (on the model `stream_start` names,
  L24), each owned by the connection that opened it, so a client that goes
  away ends its streams (L8);
- `unload`: a fresh server listing when a model is named, then an
  `UnloadCommand` whose reply waits for the core's `CommandDone`;
- `status`: the snapshot, LM Studio asked live (status_snapshot.py, L29);
- `models`: the server's models and who loaded them (models_view.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

import lmkeeperd.daemon.memory_verdict as memory_verdict
import lmkeeperd.daemon.selection as selection
from lmkeeperd.control import protocol as proto
from lmkeeperd.control.server import Connection
from lmkeeperd.core import (
    Activity,
    EngineChanged,
    StreamEnded,
    StreamStarted,
    UnloadCommand,
)
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.models_view import models_reply
from lmkeeperd.daemon.operations import Operations
from lmkeeperd.daemon.selection_check import SelectionChecker, resident
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.errors import DaemonError
from lmkeeperd.status_types import Status

log = structlog.get_logger()

# Streams one control connection may hold open at once (docs/interface.md).
MAX_STREAMS_PER_CONNECTION = 64


def process_name(pid: int | None) -> str | None:
    """The name of process `pid` (the socket peer's, from its kernel credentials), if known.

    Only for the debug log: it can be gone or renamed by now, which is fine for a trace.
    """
    if pid is None or pid <= 0:
        return None
    import psutil  # already loaded by the memory probe; here only when a select comes

    try:
        return psutil.Process(pid).name() or None
    except (psutil.Error, OSError):
        return None


class ControlHandler:
    """Answers control-socket requests; see the module docstring."""

    def __init__(
        self,
        host: Host,
        view: ServerView,
        ops: Operations,
        *,
        state_file: Path,
        status: Callable[[], Awaitable[Status]],
        checker: SelectionChecker,
    ) -> None:
        self._host = host
        self._view = view
        self._ops = ops
        self._state_file = state_file
        self._status = status
        self._checker = checker
        self._commands: dict[int, asyncio.Future[str | None]] = {}
        self._request_ids = itertools.count(1)
        self._conn_streams: dict[int, list[int]] = {}
        self._stream_owner: dict[int, int] = {}

    async def handle(self, conn: Connection, request: proto.Request) -> dict[str, Any]:
        host = self._host
        match request:
            case proto.Select(model=model, keep_alive=keep_alive, default_idle=default_idle):
                key = model.strip()
                if not key:
                    return {"ok": True, "ignored": "empty model key"}
                pid = conn.peer_pid
                selection.received(key, "socket", pid=pid, process=process_name(pid))
                stored = selection.StoredSelection(key, host.config.model.selected)
                loads = not resident(host.core, key)
                reply = await self._checker.select(
                    key,
                    source="socket",
                    store=stored,
                    keep_alive=keep_alive,
                    default_idle=default_idle,
                )
                checked = not reply.get("unchecked") and not reply.get("superseded")
                if loads and reply.get("ok") and checked:
                    # L12 at selection: the person who selected hears when it may not fit.
                    memory = await memory_verdict.for_selection(
                        self._ops.memory,
                        dict(self._view.models),
                        key,
                        host.core.model,
                        host.config.memory.budget_fraction,
                    )
                    if memory["verdict"] == memory_verdict.MAY_NOT_FIT:
                        reply["memory"] = memory
                return reply
            case proto.Activity(model=model):
                host.feed(Activity(model))
            case proto.StreamStart(model=model):
                if len(self._conn_streams.get(conn.id, ())) >= MAX_STREAMS_PER_CONNECTION:
                    return {
                        "ok": False,
                        "error": f"stream_start: this connection already holds "
                        f"{MAX_STREAMS_PER_CONNECTION} open streams, the most one may hold; "
                        "end one first",
                    }
                stream = host.next_stream()
                self._conn_streams.setdefault(conn.id, []).append(stream)
                self._stream_owner[stream] = conn.id
                host.feed(StreamStarted(stream, model))
                # After the feed: a deadline that fell due before the stream fires first in it.
                log.debug("stream_opened", stream=stream, conn=conn.id, model=model)
                return {"ok": True, "stream": stream}
            case proto.StreamEnd(stream=stream):
                return self._end_stream(conn, stream)
            case proto.Engine(name=name):
                host.feed(EngineChanged(name))
            case proto.Unload(model=model):
                return await self._unload_command(model)
            case proto.Status():
                return {"ok": True, "status": await self._status()}
            case proto.Models():
                fraction = host.config.memory.budget_fraction
                return await models_reply(self._view, self._ops.memory, host.core, fraction)
            case _:
                raise DaemonError(f"op {request.op!r} is not handled here")
        return {"ok": True}

    def _end_stream(self, conn: Connection, stream: int | None) -> dict[str, Any]:
        mine = self._conn_streams.get(conn.id, [])
        if stream is None:
            if not mine:
                return {"ok": False, "error": "stream_end: this connection has no open stream"}
            stream = mine[-1]
        owner = self._stream_owner.get(stream)
        if owner is None:
            return {"ok": False, "error": f"stream_end: no open stream {stream}"}
        if owner != conn.id:  # streams belong to the connection that opened them (L8)
            return {"ok": False, "error": f"stream_end: stream {stream} is another connection's"}
        del self._stream_owner[stream]
        with contextlib.suppress(ValueError):
            self._conn_streams.get(owner, []).remove(stream)
        self._host.feed(StreamEnded(stream))
        return {"ok": True}

    async def _unload_command(self, model: str | None) -> dict[str, Any]:
        if model is not None and model.strip():
            # Unloading a model by name needs the server's current instance ids.
            error = await self._view.refresh()
            if error is not None:
                return {"ok": False, "error": error}
        request = next(self._request_ids)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._commands[request] = future
        self._host.feed(UnloadCommand(request, model))
        error = await future
        return {"ok": True} if error is None else {"ok": False, "error": error}

    def command_done(self, request: int, error: str | None) -> None:
        """The core finished unload command `request` (its `CommandDone` action)."""
        future = self._commands.pop(request, None)
        if future is not None and not future.done():
            future.set_result(error)

    def fail_commands(self, error: str) -> None:
        """Answer every unload command still waiting with `error` (at shutdown)."""
        for future in self._commands.values():
            if not future.done():
                future.set_result(error)

    def connection_closed(self, conn: Connection) -> None:
        """L8: a client that goes away ends the streams it opened."""
        for stream in self._conn_streams.pop(conn.id, []):
            if self._stream_owner.pop(stream, None) is not None:
                self._host.feed(StreamEnded(stream))
