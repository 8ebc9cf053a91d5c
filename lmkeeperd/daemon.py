"""The daemon: the one place that wires the lifecycle core to the world.

    config file ──watcher/SIGHUP──┐
    control socket ──requests─────┤            ┌─▶ LM Studio client (load, unload)
    server reconcile ──snapshots──┼─▶ feed() ─▶│─▶ control socket subscribers, log
    load/unload outcomes ─────────┘  core      └─▶ sd_notify, command replies

Everything runs on one asyncio loop. `feed(event)` hands an event to the pure
core and performs the actions it returns at once; loads and unloads run as
tasks that feed their outcome back. The driver loop sleeps until the core's
next deadline (debounce, idle timer) or until something feeds it: an idle
daemon is asleep, except for the deliberate server reconcile every
`[server] reconcile_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from lmkeeperd import __version__, logs, paths, selection
from lmkeeperd.config import Config, is_loopback, load_config, split_listen
from lmkeeperd.control import protocol as proto
from lmkeeperd.control.server import Connection, ControlServer
from lmkeeperd.core import (
    LMSTUDIO,
    Action,
    Activity,
    CancelLoad,
    CommandDone,
    EngineChanged,
    Event,
    Lifecycle,
    LifecycleError,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    Notify,
    ResumeLoad,
    Select,
    ServerSnapshot,
    Settings,
    SettingsChanged,
    Shutdown,
    StartLoad,
    StartUnload,
    State,
    StreamEnded,
    StreamStarted,
    Tick,
    UnloadCommand,
    UnloadFailed,
    UnloadFinished,
)
from lmkeeperd.errors import (
    ConfigError,
    DaemonError,
    LmkeeperError,
    ModelNotFound,
    ServerUnreachable,
)
from lmkeeperd.listening import install_accept_guard
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory_check import MemoryCheck
from lmkeeperd.metrics import Metrics, Snapshot
from lmkeeperd.proxy import ProxyServer, ProxySettings, SwitchGate, Token, Verdict
from lmkeeperd.sdnotify import Notifier
from lmkeeperd.watcher import watch_file

log = structlog.get_logger()

_WARNING_EVENTS = frozenset(
    {"load_failed", "unload_failed", "config_invalid", "server_unreachable", "memory_advisory"}
)
_FIRST_RETRY_S = 1.0
_STREAM_FLIP = frozenset({"loaded", "streaming"})
# Streams one control connection may hold open at once (docs/interface.md).
MAX_STREAMS_PER_CONNECTION = 64


def settings_from(config: Config) -> Settings:
    m = config.model
    return Settings(
        auto_load=m.auto_load,
        idle_timeout=m.idle_timeout,
        switch_debounce=m.switch_debounce,
        draft_model=m.draft_model,
        load_config=dict(m.load),
        unload_on_exit=m.unload_on_exit,
    )


def make_client(config: Config) -> LMStudioClient:
    s = config.server
    return LMStudioClient.from_settings(
        base_url=s.url,
        token_env=s.api_token_env,
        request_timeout=s.request_timeout,
        load_timeout=s.load_timeout,
    )


def loaded_map(models: list[ModelInfo]) -> dict[str, tuple[str, ...]]:
    return {m.key: m.instance_ids for m in models if m.loaded_instances}


def proxy_settings(config: Config) -> ProxySettings:
    s, p = config.server, config.proxy
    return ProxySettings(
        upstream=s.url,
        select_on_request=p.select_on_request,
        inject_token=p.inject_token,
        token=Token.from_env(s.api_token_env) if p.inject_token else None,
        connect_timeout=s.request_timeout,
        read_timeout=s.load_timeout,
    )


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Daemon:
    """Runs lmkeeperd until stopped. `run()` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._clock = clock
        self._notifier = notifier or Notifier.from_env()
        self.core = Lifecycle(settings_from(config))
        self.client = make_client(config)
        self._old_clients: list[LMStudioClient] = []
        self._memory = MemoryCheck(config)
        self._control: ControlServer | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._recheck = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._op_tasks: dict[int, asyncio.Task[Any]] = {}
        self._commands: dict[int, asyncio.Future[str | None]] = {}
        self._request_ids = itertools.count(1)
        self._stream_ids = itertools.count(1)
        self._conn_streams: dict[int, list[int]] = {}
        self._stream_owner: dict[int, int] = {}
        self._reachable: bool | None = None
        self._outcomes = 0  # counts load/unload outcomes: a snapshot older than one is stale
        self._server_error: str | None = None
        self._server_loaded: dict[str, tuple[str, ...]] = {}
        self._models: dict[str, ModelInfo] = {}
        self._last_advisory: dict[str, Any] | None = None
        self._started = clock()
        self._sigint_count = 0
        self._pressure_task: asyncio.Task[None] | None = None
        self._state_file = paths.selection_file()
        self._started_wall = time.time()
        self.metrics = Metrics()
        self._gate = SwitchGate(self)  # select-on-request (lmkeeperd/proxy/switching.py)
        self._proxy: ProxyServer | None = None
        self._metrics_listener: ProxyServer | None = None

    # --- the core -----------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand `event` to the core and perform what it asks, right now."""
        if isinstance(event, LoadFinished | LoadFailed | UnloadFinished | UnloadFailed):
            self._outcomes += 1
            self._recheck.set()  # let status show the server's new view soon
        try:
            actions = self.core.handle(event, self._clock())
        except LifecycleError as e:  # a bug of ours: say so, keep running
            log.error("lifecycle_error", error=str(e))
            return
        for action in actions:
            self._perform(action)
        self._sync_pressure_watch()
        self._gate.changed()
        self._wake.set()

    def _perform(self, action: Action) -> None:
        match action:
            case StartLoad():
                self._op_tasks[action.op] = self._spawn(self._load(action))
            case StartUnload():
                # With `stream_opened`, this orders decisions against streams in the log:
                # the soak test (tests/test_soak.py) reads both.
                log.debug(
                    "unload_started",
                    op=action.op,
                    model=action.model,
                    instance_id=action.instance_id,
                    reason=action.reason,
                )
                self._op_tasks[action.op] = self._spawn(self._unload(action))
            case CancelLoad(op=op):
                # The request keeps running in the background so that, should the
                # server finish the load anyway, its outcome reaches the core (L5).
                log.debug("load_superseded", op=op)
            case ResumeLoad(op=op):
                log.debug("load_resumed", op=op)  # its request never stopped: nothing to do
            case Notify(event=name, fields=fields):
                self._announce(name, fields)
            case CommandDone(request=request, error=error):
                future = self._commands.pop(request, None)
                if future is not None and not future.done():
                    future.set_result(error)

    def _announce(self, name: str, fields: Mapping[str, Any]) -> None:
        level = "warning" if name in _WARNING_EVENTS else "info"
        if name == "state_changed" and {fields.get("from"), fields.get("to")} == _STREAM_FLIP:
            level = "debug"  # every proxied request flips these two: noise at info level
        getattr(log, level)(name, **fields)
        self.metrics.observe(name, fields)
        if name == "load_failed" and not fields.get("draft"):
            self._gate.load_failed(str(fields.get("model")), str(fields.get("error")))
        if self._control is not None:
            self._control.publish({"event": name, **fields, "time": _utc_now()})
        if name == "state_changed":
            self._notifier.status(self._status_line())

    def _status_line(self) -> str:
        model = self.core.model
        return f"{self.core.state.value}" + (f": {model}" if model else "")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- loads and unloads --------------------------------------------------

    async def _load(self, action: StartLoad) -> None:
        try:
            # A fresh look at the server first: lmkeeperd never loads a model that
            # already has an instance; it adopts it instead (L17).
            models = await self.client.list_models()
            self._note_models(models)
            info = next((m for m in models if m.key == action.model), None)
            if info is None:
                raise ModelNotFound(
                    f"model {action.model!r} is not downloaded on the LM Studio server at "
                    f"{self.client.base_url} (see `lms ls`)"
                )
            existing = [i for i in info.instance_ids if i not in action.avoid]
            if existing:
                self.feed(LoadFinished(action.op, existing[0], adopted=True))
                return
            self._advise(info)  # runs beside the load: it must never delay it (L12)
            result = await self.client.load(action.model, action.load_config)
            self.feed(LoadFinished(action.op, result.instance_id))
        except ServerUnreachable as e:
            self._recheck.set()  # the reconcile loop notices the outage and retries
            self.feed(LoadFailed(action.op, str(e), unreachable=True))
        except LmkeeperError as e:
            self.feed(LoadFailed(action.op, str(e)))
        except Exception as e:  # never let a bug in here stop the daemon
            log.exception("load_crashed", model=action.model)
            self.feed(LoadFailed(action.op, f"internal error: {e!r}"))
        finally:
            self._op_tasks.pop(action.op, None)

    async def _unload(self, action: StartUnload) -> None:
        try:
            await self.client.unload(action.instance_id)
            self.feed(UnloadFinished(action.op))
        except ModelNotFound:
            self.feed(UnloadFinished(action.op))  # already gone: what we wanted
        except LmkeeperError as e:
            if isinstance(e, ServerUnreachable):
                self._recheck.set()
            self.feed(UnloadFailed(action.op, str(e)))
        except Exception as e:
            log.exception("unload_crashed", model=action.model)
            self.feed(UnloadFailed(action.op, f"internal error: {e!r}"))
        finally:
            self._op_tasks.pop(action.op, None)

    def _advise(self, info: ModelInfo) -> None:
        """L12: warn before a load that likely will not fit; never block or delay it.

        Reading a GGUF header can take tens of milliseconds, so the check runs in a
        thread while the load request is already on its way.
        """
        check = self._memory.advise
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(check, info))
        self._tasks.add(task)

        def done(task: asyncio.Task[Mapping[str, Any] | None]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                log.error("memory_check_failed", model=info.key, error=str(error))
                return
            advisory = task.result()
            if advisory is not None:
                self._last_advisory = dict(advisory)
                self._announce("memory_advisory", advisory)

        task.add_done_callback(done)

    # --- memory-pressure eject --------------------------------------------------

    def _sync_pressure_watch(self) -> None:
        """Watch memory only while a model of ours is loaded and the feature is on."""
        below = self.config.memory.pressure_eject_below
        wanted = below is not None and self.core.state in (State.LOADED, State.STREAMING)
        task = self._pressure_task
        if wanted and (task is None or task.done()):
            self._pressure_task = self._spawn(self._watch_pressure())
        elif not wanted and task is not None:
            task.cancel()
            self._pressure_task = None

    async def _watch_pressure(self) -> None:
        from lmkeeperd.memory import PressureWatcher

        watcher = PressureWatcher(self._memory.probe)
        while (below := self.config.memory.pressure_eject_below) is not None:
            available = await watcher.wait_pressure(below, self.config.memory.pressure_grace)
            log.warning(
                "memory_pressure",
                available_gb=round(available / 1e9, 2),
                threshold_gb=round(below / 1e9, 2),
            )
            self.feed(MemoryPressure())  # the core ejects only when no stream is open

    # --- the server's view (L17, L18) ---------------------------------------

    def _note_models(self, models: list[ModelInfo]) -> None:
        self._models = {m.key: m for m in models}
        self._server_loaded = loaded_map(models)

    async def _reconcile_loop(self) -> None:
        retry = _FIRST_RETRY_S
        while True:
            self._recheck.clear()
            interval = self.config.server.reconcile_interval
            outcomes = self._outcomes
            try:
                models = await self.client.list_models()
            except LmkeeperError as e:
                self._server_error = str(e)
                if self._reachable is not False:
                    self._reachable = False
                    self._announce(
                        "server_unreachable", {"url": self.client.base_url, "error": str(e)}
                    )
                # Back off from ~1 s up to the reconcile interval; a refused token is
                # not retried any faster than the interval (lmstudio-api.md).
                wait = min(retry, interval) if isinstance(e, ServerUnreachable) else interval
                retry = min(retry * 2, interval)
            else:
                if outcomes != self._outcomes and self._reachable:
                    continue  # a load or unload finished meanwhile: this view is stale
                after_outage = self._reachable is not True
                self._reachable, self._server_error = True, None
                retry = _FIRST_RETRY_S
                if after_outage:
                    self._announce("server_reachable", {"url": self.client.base_url})
                self._note_models(models)
                self.feed(ServerSnapshot(loaded_map(models), after_outage=after_outage))
                wait = interval
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on Python 3.11 it swallows a cancellation that arrives just as
                # the event is set, which the stop's own unload does; this loop then outlived
                # the stop and the daemon never exited (tests/test_e2e_config.py, 1 run in 5).
                async with asyncio.timeout(wait):
                    await self._recheck.wait()

    # --- config -------------------------------------------------------------

    async def _watch_config(self) -> None:
        watcher = watch_file(self.config_path)
        try:
            while True:
                await watcher.wait_changed()
                self.reload(source="file")
        finally:
            watcher.close()

    def reload(self, source: str) -> None:
        """Re-read the config; an invalid one keeps the last good config running."""
        self._notifier.reloading()
        if not self.config_path.exists():
            # Mid-run, a vanished file is far more often an editor's save dance or a
            # slip than a wish for every default: keep what runs (defaults apply at start).
            log.warning("config_missing", path=str(self.config_path), kept="last good config")
            self._notifier.ready(self._status_line())
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            self._announce("config_invalid", {"error": str(e), "path": str(self.config_path)})
            self._notifier.ready(self._status_line())
            return
        old, self.config = self.config, new
        if new == old and source == "file":
            self._notifier.ready(self._status_line())
            return  # touched, not changed
        if new.log != old.log:
            logs.setup(new.log.level, new.log.format)
        if new.server != old.server:
            self._old_clients.append(self.client)
            self.client = make_client(new)
            # Another server is like one coming back from an outage: what the core
            # wanted is restored there, not mistaken for a model unloaded by hand.
            self._reachable = None
            self._recheck.set()
        if new.control != old.control:
            log.warning("config_needs_restart", key="control.socket")
        for key, before, after in (
            ("proxy.listen", old.proxy.listen, new.proxy.listen),
            ("metrics.listen", old.metrics.listen, new.metrics.listen),
        ):
            if before != after:
                log.warning("config_needs_restart", key=key)
        if self._proxy is not None and (new.server, new.proxy) != (old.server, old.proxy):
            self._proxy.configure(proxy_settings(new))
        self._memory = MemoryCheck(new)
        self.feed(SettingsChanged(settings_from(new)))
        self._announce("config_reloaded", {"path": str(self.config_path), "source": source})
        if new.model.selected != old.model.selected and new.model.selected.strip():
            # A changed `selected` is a selection, and the newest one: it replaces what an
            # older socket selection stored, or a restart would bring that one back.
            selection.save(
                self._state_file,
                selection.StoredSelection(new.model.selected.strip(), new.model.selected),
            )
            self.feed(Select(new.model.selected))
        self._notifier.ready(self._status_line())

    # --- the control socket (RequestHandler) --------------------------------

    async def handle(self, conn: Connection, request: proto.Request) -> dict[str, Any]:
        match request:
            case proto.Select(model=model):
                key = model.strip()
                if not key:
                    return {"ok": True, "ignored": "empty model key"}
                selection.save(
                    self._state_file, selection.StoredSelection(key, self.config.model.selected)
                )
                self.feed(Select(key))
            case proto.Activity():
                self.feed(Activity())
            case proto.StreamStart():
                if len(self._conn_streams.get(conn.id, ())) >= MAX_STREAMS_PER_CONNECTION:
                    return {
                        "ok": False,
                        "error": f"stream_start: this connection already holds "
                        f"{MAX_STREAMS_PER_CONNECTION} open streams, the most one may hold; "
                        "end one first",
                    }
                stream = next(self._stream_ids)
                self._conn_streams.setdefault(conn.id, []).append(stream)
                self._stream_owner[stream] = conn.id
                self.feed(StreamStarted(stream))
                # After the feed: a deadline that fell due before the stream fires first in it.
                log.debug("stream_opened", stream=stream, conn=conn.id)
                return {"ok": True, "stream": stream}
            case proto.StreamEnd(stream=stream):
                return self._end_stream(conn, stream)
            case proto.Engine(name=name):
                self.feed(EngineChanged(name))
            case proto.Unload(model=model):
                return await self._unload_command(model)
            case proto.Status():
                return {"ok": True, "status": self.status()}
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
        self.feed(StreamEnded(stream))
        return {"ok": True}

    async def _unload_command(self, model: str | None) -> dict[str, Any]:
        if model is not None and model.strip():
            # Unloading a model by name needs the server's current instance ids.
            for _ in range(3):
                outcomes = self._outcomes
                try:
                    models = await self.client.list_models()
                except LmkeeperError as e:
                    return {"ok": False, "error": str(e)}
                if outcomes == self._outcomes:  # else stale: a load or unload finished
                    self._note_models(models)
                    self.feed(ServerSnapshot(loaded_map(models)))
                    break
        request = next(self._request_ids)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._commands[request] = future
        self.feed(UnloadCommand(request, model))
        error = await future
        return {"ok": True} if error is None else {"ok": False, "error": error}

    def connection_closed(self, conn: Connection) -> None:
        """L8: a client that goes away ends the streams it opened."""
        for stream in self._conn_streams.pop(conn.id, []):
            if self._stream_owner.pop(stream, None) is not None:
                self.feed(StreamEnded(stream))

    # --- the proxy (ProxyHooks, and SwitchWorld for select-on-request) ----------

    def activity(self) -> None:
        self.feed(Activity())

    def stream_opened(self) -> int:
        stream = next(self._stream_ids)
        log.debug("stream_opened", stream=stream, conn="proxy")
        self.feed(StreamStarted(stream))
        return stream

    def stream_closed(self, stream: int) -> None:
        self.feed(StreamEnded(stream))

    async def stream_for(self, model: str, *, max_wait: float) -> int:
        return await self._gate.stream_for(model, max_wait=max_wait)

    def verdict(self, model: str) -> Verdict:
        core = self.core
        info = self._models.get(model)
        if (
            info is None  # not on the server (or not listed yet): LM Studio answers for itself
            or info.type.startswith("embedding")  # served beside the chat model, never instead
            or core.engine != LMSTUDIO
            or core.stopped
            or not core.settings.auto_load
        ):
            return Verdict.PASS
        if core.model == model and core.state in (State.LOADED, State.STREAMING):
            return Verdict.READY
        return Verdict.SWITCH

    def selected_model(self) -> str | None:
        return self.core.selected

    def select_model(self, model: str) -> None:
        # Not saved as the selection to restore at start: a request is a passing
        # use; the control socket and the config say what to keep loaded.
        self.feed(Select(model))

    def metrics_text(self) -> str:
        core = self.core
        return self.metrics.render(
            Snapshot(
                version=__version__,
                state=core.state.value,
                model=core.model,
                selected=core.selected,
                active_streams=core.active_streams,
                server_reachable=self._reachable,
                start_time=self._started_wall,
                proxy=self._proxy.stats if self._proxy is not None else None,
                proxy_switches=self._gate.selections,
            )
        )

    async def _start_listeners(self) -> None:
        """The proxy and the metrics listener, as configured; raises DaemonError."""
        if self.config.proxy.listen:
            host, port = split_listen(self.config.proxy.listen)
            settings = proxy_settings(self.config)
            self._proxy = ProxyServer(
                host, port, metrics=self.metrics_text, hooks=self, settings=settings
            )
            await self._proxy.start()
            log.info("proxy_listening", address=self._proxy.address, upstream=settings.upstream)
            if not is_loopback(host):
                advice = "other machines can reach LM Studio through it"
                log.warning("proxy_exposed", address=self._proxy.address, advice=advice)
            if settings.inject_token and settings.token is None:
                env = self.config.server.api_token_env
                log.warning("proxy_token_missing", env=env, advice=f"set {env} to inject a token")
        if self.config.metrics.listen:
            host, port = split_listen(self.config.metrics.listen)
            self._metrics_listener = ProxyServer(host, port, metrics=self.metrics_text)
            await self._metrics_listener.start()
            log.info("metrics_listening", address=self._metrics_listener.address)
            if not is_loopback(host):
                log.warning("metrics_exposed", address=self._metrics_listener.address)

    async def _close_listeners(self) -> None:
        for listener in (self._proxy, self._metrics_listener):
            if listener is not None:
                await listener.close()

    def _proxy_status(self) -> dict[str, Any] | None:
        proxy = self._proxy
        if proxy is None:
            return None
        stats, settings = proxy.stats, proxy.settings
        last = stats.last_request_wall
        return {
            "listen": proxy.address,
            "requests_in_flight": stats.in_flight,
            "streams_open": stats.streams_open,
            "requests_total": stats.requests_total,
            "waiting_for_switch": self._gate.waiting,
            "last_request_at": None
            if last is None
            else datetime.fromtimestamp(last, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "last_request_ago_s": None if last is None else round(time.time() - last, 1),
            "select_on_request": settings is not None and settings.select_on_request,
        }

    # --- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self._clock()
        core = self.core
        idle = core.idle_eject_in(now)
        draft = core.draft
        return {
            "state": core.state.value,
            "model": core.model,
            "selected": core.selected,
            "pending": core.pending,
            "engine": core.engine,
            "active_streams": core.active_streams,
            "idle_eject_in_s": None if idle is None else round(idle, 1),
            "server": {
                "url": self.client.base_url,
                "reachable": self._reachable,
                "loaded": sorted(self._server_loaded),
                "error": self._server_error,
            },
            "memory": self._memory.status(),
            "last_error": core.last_error,
            "last_advisory": self._last_advisory,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(now - self._started, 1),
            "adopted": core.adopted,
            "draft": None if draft is None else draft[0],
            "config": str(self.config_path),
            "subscribers": self._control.subscribers if self._control else 0,
            "dropped_events": self._control.dropped_events if self._control else 0,
            "proxy": self._proxy_status(),
            "metrics": None
            if self._metrics_listener is None
            else {"listen": self._metrics_listener.address},
        }

    # --- life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        install_accept_guard(loop)  # out of descriptors: one log line per burst, no tracebacks
        self._control = ControlServer(paths.socket_path(self.config), self)
        try:
            await self._control.start()
            await self._start_listeners()
        except DaemonError as e:
            log.error("daemon_start_failed", error=str(e))
            await self._close_listeners()
            await self._control.close()
            await self.client.aclose()
            return 1
        self._install_signals(loop)
        log.info(
            "daemon_started",
            version=__version__,
            pid=os.getpid(),
            config=str(self.config_path),
            socket=str(self._control.path),
            server=self.client.base_url,
        )
        initial = selection.initial_selection(
            self.config.model.selected, selection.load(self._state_file)
        )
        if initial.strip():
            self.feed(Select(initial))
        self._spawn(self._reconcile_loop())
        self._spawn(self._watch_config())
        interval = self._notifier.watchdog_interval()
        if interval is not None:
            self._spawn(self._watchdog(interval))
        self._notifier.ready(self._status_line())
        try:
            await self._drive()
        finally:
            await self._shutdown()
        return 0

    async def _drive(self) -> None:
        """Sleep until the next deadline or until something was fed; tick when one is due."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            deadline = self.core.next_deadline()
            self._wake.clear()
            # A timer handle rather than wait_for(), which makes a task per wake-up: every
            # request on the socket wakes this loop (bench/bench_roundtrip.py).
            timer = None
            if deadline is not None:
                timer = loop.call_later(max(0.0, deadline - self._clock()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
            due = self.core.next_deadline()
            # Every event fires what fell due before it; a Tick is needed only when none came.
            if not self._stop.is_set() and due is not None and due <= self._clock():
                self.feed(Tick())

    async def _shutdown(self) -> None:
        """L16: cancel pending work, unload within `shutdown_timeout`, always finish."""
        bound = self.config.model.shutdown_timeout
        deadline = self._clock() + bound
        self._notifier.stopping()
        log.info("daemon_stopping", timeout_s=bound)
        self.feed(Shutdown())
        for listener in (self._proxy, self._metrics_listener):
            if listener is not None:
                listener.stop_accepting()  # requests under way finish while we unload
        while self._shutdown_waits_on_server() and self._clock() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - self._clock()))
        if self._shutdown_waits_on_server():
            log.warning("shutdown_unload_timed_out", timeout_s=bound)
        await self._close_listeners()  # before the sweep below: its stream ends feed the core
        for task in list(self._tasks):
            task.cancel()
        for future in self._commands.values():
            if not future.done():
                future.set_result("lmkeeperd is shutting down")
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            await self._control.close()
        for client in [self.client, *self._old_clients]:
            with contextlib.suppress(Exception):
                await client.aclose()
        log.info("daemon_stopped")

    def _shutdown_waits_on_server(self) -> bool:
        # A load cut short by the stop may still finish on the server (LM Studio does not
        # abandon a load whose client left); its outcome makes the core unload that instance,
        # so with unload_on_exit it is waited for too, within the same bound.
        if self.core.unloads_in_flight:
            return True
        return self.config.model.unload_on_exit and bool(self._op_tasks)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a blocked loop stops the pings.
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.reload(source="sighup"))

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _on_sigint(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            os._exit(130)  # a second Ctrl-C means now
        self.request_stop()


def _remember_missing_sniffio() -> None:
    """Make a missing `sniffio` fail its import at once, every time after the first.

    httpcore imports sniffio inside every lock and cancellation shield it sets up, and
    Python does not remember a failed import: without sniffio (anyio 4 no longer needs it)
    each request searched the whole import path several times, about half the CPU of an
    idle daemon's reconcile (bench/bench_idle.py). None in sys.modules is Python's own
    marker for "this module is not there".
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def run(config_path: Path) -> int:
    """Entry point of `lmkeeperd run`."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        logs.setup()
        log.error("config_invalid", error=str(e), path=str(config_path))
        return 2
    logs.setup(config.log.level, config.log.format)
    _remember_missing_sniffio()

    async def main() -> int:
        return await Daemon(config, config_path).run()

    return asyncio.run(main())
