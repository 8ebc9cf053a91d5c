"""`Emulator`: a real HTTP server speaking LM Studio's API, with fault injection.

The server's life has four phases: new -> up <-> down -> stopped. Going down
closes the listening socket (connections are refused) and cuts every open
connection, as a quitting LM Studio would; coming back listens again on the
same port. `stop()` is final, idempotent and bounded: it never waits on a
hung unload, a load delay or a stream, because all of those wait on the state's
condition and are woken by it.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from lmkeeperd.emulator.activity import ActivityTracker, ProcessingState, ServedRequest
from lmkeeperd.emulator.catalog import CatalogModel, default_catalog, load_catalog
from lmkeeperd.emulator.channel_switches import DEFAULT_AUTH_TIMEOUT, ChannelSwitches, FrameRecord
from lmkeeperd.emulator.handler import EmulatorRequestHandler
from lmkeeperd.emulator.http_server import HTTPServer
from lmkeeperd.emulator.state import DEFAULT_LOG_LIMIT, EmulatorState, RequestRecord

DEFAULT_FAILURE_MESSAGE = "Failed to load model (failure injected by the emulator)"

__all__ = ["DEFAULT_FAILURE_MESSAGE", "Emulator", "EmulatorRequestHandler"]

# How long stop() gives connection threads to wind down before leaving them be.
STOP_JOIN_SECONDS = 2.0
# serve_forever's poll: bounds how long going down or stopping takes.
POLL_SECONDS = 0.05


class Emulator:
    """An LM Studio stand-in on a real socket; see docs/emulator.md."""

    def __init__(
        self,
        models: Sequence[CatalogModel] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        v0_only: bool = False,
        jit: bool = False,
        stream_interval: float = 0.02,
        stream_chunks: int = 20,
        error_style: str = "object",
        auto_evict: bool = True,
        legacy_load_answer: bool = False,
        load_delay: float = 0.0,
        verbose: bool = False,
        request_log_limit: int = DEFAULT_LOG_LIMIT,
        channel_auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
    ) -> None:
        self._state = EmulatorState(
            default_catalog() if models is None else models,
            token=token,
            v0_only=v0_only,
            jit=jit,
            stream_interval=stream_interval,
            stream_chunks=stream_chunks,
            error_style=error_style,
            log_limit=request_log_limit,
        )
        self._state.update_settings(auto_evict=auto_evict, legacy_load_answer=legacy_load_answer)
        self._state.set_load_delay(load_delay)
        # The websocket channel (ws.py): its switches, and what each instance is doing.
        self._channel = ChannelSwitches(channel_auth_timeout, request_log_limit)
        self._activity = ActivityTracker(on_change=self._state.touch)
        self.verbose = verbose
        self._host = host
        self._port = port
        self._phase = "new"  # "new" | "up" | "down" | "stopped"
        self._lifecycle = threading.Lock()
        self._server: HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopped = threading.Event()
        self._timers: list[threading.Thread] = []

    @classmethod
    def from_catalog_file(cls, path: str | Path, **options: Any) -> Emulator:
        """An emulator serving the catalog in a JSON file (format: docs/emulator.md)."""
        return cls(load_catalog(path), **options)

    def __repr__(self) -> str:
        where = f"http://{self._host}:{self._port}" if self._port else self._host
        return f"Emulator({where}, {self._phase}, {self._state!r})"

    # -- life ----------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """ "new", "up", "down" (refusing connections) or "stopped"."""
        return self._phase

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the emulator has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        with self._lifecycle:
            if self._phase != "new":
                raise RuntimeError(f"start() on an emulator that is {self._phase}")
            self._listen()
            self._phase = "up"
            self._state.touch()

    def stop(self) -> None:
        """Stop for good: cut everything, wake every waiter. Idempotent, bounded."""
        with self._lifecycle:
            if self._phase == "stopped":
                return
            self._phase = "stopped"
            self._stopped.set()
            self._state.close()
            self._close_listener()
            threads = [*self._cut_connections(keep=None), *self._timers]
        # Joined outside the lock: a come-back timer may be waiting for it.
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def go_down(self) -> None:
        """As if LM Studio quit: connections refused, open ones cut, same port kept."""
        self._go_down(keep=None)

    def come_back(self, forget: bool = True) -> None:
        """Listen again on the same port; `forget` = a restart with nothing loaded."""
        with self._lifecycle:
            if self._phase != "down":
                raise RuntimeError(f"come_back() on an emulator that is {self._phase}")
            if forget:
                self._state.forget()
            self._listen()
            self._phase = "up"
            self._state.touch()

    def go_down_for(
        self, seconds: float, *, forget: bool = True, keep: socket.socket | None = None
    ) -> None:
        """Go down now and come back after `seconds` (for the HTTP control API).

        `keep` is a connection left open so that the control request can be answered.
        """
        self._go_down(keep=keep)
        timer = threading.Thread(
            target=self._come_back_after,
            args=(seconds, forget),
            name="emulator-come-back",
            daemon=True,
        )
        self._timers.append(timer)
        timer.start()

    def _come_back_after(self, seconds: float, forget: bool) -> None:
        if self._stopped.wait(seconds):
            return
        try:
            self.come_back(forget)
        except RuntimeError:
            pass  # came back already, or stopped meanwhile
        except OSError as exc:
            sys.stderr.write(f"emulator: cannot listen again on port {self._port}: {exc}\n")

    def _go_down(self, keep: socket.socket | None) -> None:
        with self._lifecycle:
            if self._phase != "up":
                raise RuntimeError(f"go_down() on an emulator that is {self._phase}")
            self._phase = "down"
            self._state.interrupt()
            self._close_listener()
            self._cut_connections(keep=keep)

    def _listen(self) -> None:
        server = HTTPServer((self._host, self._port), self)
        self._port = int(server.server_address[1])
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name="emulator-serve",
            daemon=True,
        )
        self._serve_thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._serve_thread
        self._server = self._serve_thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join()
        server.server_close()

    def _track(self, connection: socket.socket, thread: threading.Thread) -> None:
        with self._connections_lock:
            self._connections[connection] = thread

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.pop(connection, None)

    def _cut_connections(self, keep: socket.socket | None) -> list[threading.Thread]:
        # shutdown() rather than close(): the owning thread still closes its own socket,
        # so a file descriptor is never closed twice or reused under its feet.
        with self._connections_lock:
            for connection in self._connections:
                if connection is keep:
                    continue
                with contextlib.suppress(OSError):  # already closed by its peer
                    connection.shutdown(socket.SHUT_RDWR)
            return list(self._connections.values())

    # -- fault injection -----------------------------------------------------------

    def set_load_delay(self, seconds: float, model: str | None = None) -> None:
        """Loads take `seconds`; model=None sets it for all models (and clears per-model ones).

        Read live: lowering it also shortens loads already waiting.
        """
        self._state.set_load_delay(seconds, model)

    def fail_next_loads(
        self, n: int, message: str = DEFAULT_FAILURE_MESSAGE, status: int = 500
    ) -> None:
        """The next `n` load requests (JIT loads included) fail after their delay."""
        self._state.fail_next_loads(n, message, status)

    def hang_unloads(self, on: bool) -> None:
        """While on, unload requests block (until turned off, a go_down, or stop())."""
        self._state.hang_unloads(on)

    def set_guardrail(
        self, *, memory_gb: float | None = None, max_models: int | None = None
    ) -> None:
        """LM Studio's load guardrail: refuse loads past `memory_gb` (loaded sizes plus the
        new model's, from the catalog) or past `max_models` loaded; None (both) = off."""
        self._state.set_guardrail(memory_gb, max_models)

    def load_behind(self, key: str, config: Mapping[str, Any] | None = None) -> str:
        """Load as the GUI would (no delay, no failure); returns the new instance id.

        Raises LookupError for a key not in the catalog, ValueError for a bad config.
        """
        return self._state.load_behind(key, config)

    def unload_behind(self, instance_id: str) -> None:
        """Unload as the GUI would; raises LookupError for an unknown instance id."""
        self._state.unload_behind(instance_id)

    def loaded(self) -> dict[str, list[str]]:
        """Model key -> its loaded instance ids (only models with at least one)."""
        return self._state.loaded()

    def requests(self) -> list[RequestRecord]:
        """Every non-control request, in order of arrival (the newest 100k by default)."""
        return self._state.requests()

    def clear_requests(self) -> None:
        self._state.clear_requests()

    def set_token(self, token: str | None) -> None:
        self._state.update_settings(token=token)

    def set_v0_only(self, on: bool) -> None:
        """The 0.3 mode: no /api/v1 (answered as unknown endpoints); v0 and /v1 served."""
        self._state.update_settings(v0_only=bool(on))

    def set_auto_evict(self, on: bool) -> None:
        """LM Studio's auto-evict (on by default): a JIT load unloads earlier JIT loads."""
        self._state.update_settings(auto_evict=bool(on))

    def set_legacy_load_answer(self, on: bool) -> None:
        """Answer loads with `model_instance_id`, as LM Studio before 0.4.0 did."""
        self._state.update_settings(legacy_load_answer=bool(on))

    def advance_clock(self, seconds: float) -> None:
        """Move the TTL clock on by `seconds`: idle JIT instances past their TTL unload now."""
        self._state.advance_clock(seconds)

    def instance_info(self) -> dict[str, dict[str, Any]]:
        """Instance id -> {model, jit, ttl, idle_seconds (None while in use), in_use}."""
        return self._state.instance_info()

    def set_jit(self, on: bool) -> None:
        self._state.update_settings(jit=bool(on))

    def set_stream(self, interval: float, chunks: int) -> None:
        self._state.update_settings(stream_interval=interval, stream_chunks=chunks)

    def set_error_style(self, style: str) -> None:
        """ "object" -> {"error": {"message": ...}}; "string" -> {"error": "..."}."""
        self._state.update_settings(error_style=style)

    def state(self) -> dict[str, Any]:
        """The current switches (the token only as token_set)."""
        return {**self._state.describe(), **self._channel.describe()}

    # -- the websocket channel (ws.py, rpc.py, activity.py) ------------------------

    def set_channel(self, on: bool) -> None:
        """Off: the upgrade is answered like an unknown endpoint (HTTP 200, error body)."""
        self._channel.update(enabled=on)

    def refuse_channel_auth(self, on: bool) -> None:
        """While on, every channel auth frame is refused (even a right token)."""
        self._channel.update(refuse_auth=on)

    def set_channel_rpc_missing(self, on: bool) -> None:
        """While on, getInstanceProcessingState is unknown, as before LM Studio 0.3.27."""
        self._channel.update(rpc_missing=on)

    def set_channel_strict(self, on: bool) -> None:
        """While on, a lookup that finds nothing is an rpcError even with throwIfNotFound false."""
        self._channel.update(strict=on)

    def set_channel_delay(self, seconds: float) -> None:
        """Every channel reply (not the auth reply) waits `seconds` first."""
        self._channel.update(delay=seconds)

    def set_channel_auth_timeout(self, seconds: float) -> None:
        """How long a new channel connection may take to authenticate (LM Studio: 10 s)."""
        self._channel.update(auth_timeout=seconds)

    def frames(self) -> list[FrameRecord]:
        """Every frame channel clients sent, in order of arrival."""
        return self._channel.frames()

    def clear_frames(self) -> None:
        self._channel.clear_frames()

    def processing_state(self, instance_id: str) -> ProcessingState:
        """What getInstanceProcessingState answers for `instance_id` now."""
        return self._activity.state(instance_id)

    @contextmanager
    def _serving(self, name: str, kind: str) -> Iterator[ServedRequest]:
        """Around one inference request for `name` (a model key or an instance id)."""
        loaded = self._state.loaded()
        instance_id = name
        if not any(name in ids for ids in loaded.values()) and loaded.get(name):
            instance_id = loaded[name][0]
        with self._activity.serving(instance_id, kind) as served:
            yield served

    # -- waiting, for tests --------------------------------------------------------

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until `predicate()` is true, re-checked on every change to the emulator.

        Raises TimeoutError after `timeout` seconds.
        """
        self._state.wait_until(predicate, timeout)

    def wait_for_request(
        self,
        path: str,
        *,
        method: str | None = None,
        after: float | None = None,
        timeout: float = 5.0,
    ) -> RequestRecord:
        """The first logged request to `path` (arrived after `after`), once it has arrived.

        It may still be in flight (status 0), e.g. an unload that hangs.
        """
        found: list[RequestRecord] = []

        def arrived() -> bool:
            for record in self._state.requests():
                if (
                    record.path == path
                    and (method is None or record.method == method)
                    and (after is None or record.t > after)
                ):
                    found.append(record)
                    return True
            return False

        self._state.wait_until(arrived, timeout)
        return found[0]
