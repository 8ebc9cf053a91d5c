"""The lifecycle core: which model to load and unload, and when.

Theory of operation
===================
`Lifecycle` is a pure state machine in the style of h11: it owns no sockets,
no clock, no tasks. The driver (lmkeeperd.daemon) calls
`handle(event, now)` with a monotonic `now` in seconds and performs the
actions it gets back (`StartLoad`, `CancelLoad`, `ResumeLoad`, `StartUnload`,
`Notify`, `CommandDone`); the outcome of each load or unload comes back later as an
event carrying the same `op` id. Between events the driver sleeps until
`next_deadline()` (the debounce or the idle timer) and then hands in a `Tick`.

The main model (the one selected) moves through five states:

    idle ──select (after debounce)──▶ loading ──LoadFinished──▶ loaded ⇄ streaming
      ▲                                 │ LoadFailed                │ idle timer, switch,
      │◀────────────────────────────────┘                          │ unload command
      │◀──────────UnloadFinished/Failed──── unloading ◀─────────────┘

Rules (ids from lifecycle-spec.md):
- A selection waits `switch_debounce` for a newer one (L3); selecting what is
  already loaded or loading only refreshes the idle timer (L2).
- A switch unloads our model first, then loads the new one, even when the
  unload failed (L4). A switch during a load supersedes it (L5): the driver
  stops waiting, and if the server finishes that load anyway, the core
  unloads the stray instance when its outcome arrives. Switching back to a
  model whose superseded load is still in flight waits for that load again
  (`ResumeLoad`) instead of starting a second one, and a stray of it still
  waiting for streams to end is adopted and kept: never two instances.
- While any stream is open no unload is ever emitted (L7): switches are
  queued (latest wins) and stray/background unloads are deferred until the
  last stream ends. Streams are counted by id across clients (L8).
- The idle timer runs only in `loaded` (L9-L11).
- Another engine makes the core hands-off until LM Studio comes back (L13).
- Server snapshots (L17, L18): a model that vanished from the server is
  forgotten; after an outage the model we wanted is loaded again, since a
  server restart forgets every model.
- Adopted models (already loaded when selected) count as ours: they are the
  selected model, and the user asked lmkeeperd to manage it. Any other model
  on the server is never unloaded, except by a command that names it (L18).

An event that cannot be legal (an outcome for an op that was never issued)
raises `LifecycleError` and changes nothing. Everything a user can send
(selections, stream ends for unknown ids, ...) is legal and at worst ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from lmkeeperd.core.actions import (
    Action,
    CancelLoad,
    CommandDone,
    Notify,
    ResumeLoad,
    StartLoad,
    StartUnload,
)
from lmkeeperd.core.events import (
    Activity,
    EngineChanged,
    Event,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    Select,
    ServerSnapshot,
    Settings,
    SettingsChanged,
    Shutdown,
    StreamEnded,
    StreamStarted,
    Tick,
    UnloadCommand,
    UnloadFailed,
    UnloadFinished,
)

# Re-exported: the core's users import it from here (lmkeeperd.core). errors.py is a leaf
# with no imports, so the core stays pure.
from lmkeeperd.errors import LifecycleError as LifecycleError

LMSTUDIO = "lmstudio"


class State(enum.Enum):
    IDLE = "idle"  # nothing of ours is loaded or loading
    LOADING = "loading"  # a load of `model` is in flight
    LOADED = "loaded"  # `model` is loaded and no stream is open; the idle timer may run
    STREAMING = "streaming"  # `model` is loaded and at least one stream is open
    UNLOADING = "unloading"  # `model` is being unloaded (switch, idle, command, exit)


@dataclass(slots=True)
class _Op:
    kind: str  # "load" | "unload"
    model: str
    started: float
    draft: bool = False
    superseded: bool = False  # a load nobody waits for any more (L5)
    config: dict[str, Any] = field(default_factory=dict)  # what a load asked for (L14)
    instance_id: str = ""
    reason: str = ""
    requests: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Request:
    """An unload command waiting for its unloads to finish."""

    ops: set[int]
    errors: list[str] = field(default_factory=list)


class Lifecycle:
    """The pure lifecycle core. See the module docstring for how it works."""

    def __init__(self, settings: Settings | None = None, *, engine: str = LMSTUDIO) -> None:
        self.settings = settings or Settings()
        self._state = State.IDLE
        self._model: str | None = None
        self._instance: str | None = None
        self._adopted = False
        self._selected: str | None = None
        self._wanted: str | None = None  # what we mean to have loaded (restored after outages)
        self._engine = engine
        self._streams: set[int] = set()
        self._debounce_target: str | None = None
        self._debounce_at: float | None = None
        self._queued: str | None = None  # selection waiting for the last stream to end (L7)
        self._next: str | None = None  # load to start once the current unload finishes (L4)
        self._idle_from: float | None = None
        self._idle_at: float | None = None
        self._load_op: int | None = None
        self._unload_op: int | None = None
        self._draft_op: int | None = None
        self._draft: tuple[str, str] | None = None  # (model, instance) of the draft we loaded
        self._deferred: list[tuple[str, str, str, list[int]]] = []  # unloads waiting on streams
        self._ops: dict[int, _Op] = {}
        self._requests: dict[int, _Request] = {}
        self._last_op = 0
        self._server: dict[str, tuple[str, ...]] = {}
        self._stopped = False
        self.last_error: str | None = None

    # --- read-only view (status) --------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def model(self) -> str | None:
        """What lmkeeperd has loaded, is loading or is unloading; None when idle."""
        return self._model

    @property
    def instance_id(self) -> str | None:
        return self._instance

    @property
    def adopted(self) -> bool:
        return self._adopted

    @property
    def selected(self) -> str | None:
        return self._selected

    @property
    def pending(self) -> str | None:
        """A selection not applied yet: queued behind streams, the debounce or an unload."""
        return self._queued or self._debounce_target or self._next

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    @property
    def draft(self) -> tuple[str, str] | None:
        """(model, instance id) of the draft model lmkeeperd loaded, if any (L15)."""
        return self._draft

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def unloads_in_flight(self) -> int:
        return sum(1 for op in self._ops.values() if op.kind == "unload")

    @property
    def loads_in_flight(self) -> int:
        """Loads whose outcome still matters (superseded ones excluded)."""
        return sum(1 for op in self._ops.values() if op.kind == "load" and not op.superseded)

    def idle_eject_in(self, now: float) -> float | None:
        return None if self._idle_at is None else max(0.0, self._idle_at - now)

    def next_deadline(self) -> float | None:
        """The monotonic time of the next timer (debounce or idle), or None."""
        times = [t for t in (self._debounce_at, self._idle_at) if t is not None]
        return min(times) if times else None

    # --- the one entry point ------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        self._check_legal(event)
        out: list[Action] = []
        match event:
            case LoadFinished() | LoadFailed() | UnloadFinished() | UnloadFailed():
                self._outcome(event, now, out)
                self._fire_due(now, out)
                return out
        if self._stopped:
            return out
        # Deadlines that fell due before this event happened first.
        self._fire_due(now, out)
        match event:
            case Select(model=model):
                self._select(model, now, out)
            case StreamStarted(stream=stream):
                self._stream_started(stream, out)
            case StreamEnded(stream=stream):
                self._stream_ended(stream, now, out)
            case Activity():
                if self._hands_on() and self._state is State.LOADED:
                    self._restart_idle(now)
            case EngineChanged(name=name):
                self._engine_changed(name, now, out)
            case UnloadCommand():
                self._unload_command(event, now, out)
            case SettingsChanged(settings=settings):
                self._settings_changed(settings, now)
            case MemoryPressure():
                if self._hands_on() and self._state is State.LOADED:
                    self._wanted = None
                    self._unload_main("memory_pressure", now, out)
            case ServerSnapshot():
                self._snapshot(event, now, out)
            case Shutdown():
                self._shutdown(now, out)
            case Tick():
                pass
        return out

    # --- selection and switching --------------------------------------------

    def _hands_on(self) -> bool:
        return self._engine == LMSTUDIO and not self._stopped

    def _select(self, model: str, now: float, out: list[Action]) -> None:
        key = model.strip()
        if not key:
            return
        self._selected = key
        if not self._hands_on() or not self.settings.auto_load:
            return  # L1: recorded for status, nothing loaded; L13: hands-off
        if key == self._model and self._state in (State.LOADING, State.LOADED, State.STREAMING):
            # L2: already ours. A newer selection of the same model also cancels
            # any switch still waiting (debounce, or queued behind a stream: L7).
            self._cancel_debounce()
            self._queued = None
            if self._state is State.LOADED:
                self._restart_idle(now)
            return
        if self._state is State.STREAMING:
            self._cancel_debounce()
            self._queued = key  # L7: only the latest is kept
            return
        if self.settings.switch_debounce <= 0:
            self._cancel_debounce()
            self._begin_switch(key, now, out)
        else:
            self._debounce_target = key
            self._debounce_at = now + self.settings.switch_debounce

    def _cancel_debounce(self) -> None:
        self._debounce_target = None
        self._debounce_at = None

    def _begin_switch(self, target: str, now: float, out: list[Action]) -> None:
        if not self._hands_on() or not self.settings.auto_load:
            return
        self._wanted = target
        if target == self._model and self._state in (State.LOADING, State.LOADED, State.STREAMING):
            if self._state is State.LOADED:
                self._restart_idle(now)
            return
        if self._state is State.STREAMING:
            self._queued = target
        elif self._state is State.LOADED:
            self._next = target
            self._unload_main("switch", now, out)
        elif self._state is State.LOADING:
            self._supersede_load(out)
            self._model = None
            self._start_load(target, now, out)
        elif self._state is State.UNLOADING:
            self._next = target
        else:
            self._start_load(target, now, out)

    def _start_load(
        self, model: str, now: float, out: list[Action], *, draft: bool = False
    ) -> None:
        config = dict(self.settings.load_config)
        if not draft and self._resume_load(model, config, out):
            return
        # A stray of this model whose unload waits for streams to end may be adopted: wanted
        # again, it is kept (see _load_finished) rather than joined by a second instance.
        going = tuple(
            [o.instance_id for o in self._ops.values() if o.kind == "unload" and o.model == model]
            + [i for m, i, reason, _ in self._deferred if m == model and reason != "superseded"]
        )
        op = self._new_op(_Op("load", model, now, draft=draft, config=config))
        out.append(StartLoad(op, model, config, draft=draft, avoid=going))
        out.append(Notify("load_started", {"model": model, "draft": draft}))
        if draft:
            self._draft_op = op
            return
        self._load_op = op
        self._model = model
        self._instance = None
        self._adopted = False
        self._set_state(State.LOADING, out)

    def _resume_load(self, model: str, config: dict[str, Any], out: list[Action]) -> bool:
        """Wait again for a superseded load of `model` still in flight, rather than start one.

        Switching away and back while a slow load runs (A, B, A) would otherwise have two
        loads of A in flight, and both instances on the server when they finish: the chaos
        soak (tests/daemon/test_e2e_soak.py) saw four copies of one model at once. The load under
        way is as good as a new one, and done sooner; only one with other load settings is not.
        """
        for op_id in sorted(self._ops, reverse=True):
            op = self._ops[op_id]
            if op.kind == "load" and op.superseded and not op.draft and op.model == model:
                if op.config != config:
                    continue
                op.superseded = False
                out.append(ResumeLoad(op_id))
                out.append(Notify("load_started", {"model": model, "draft": False}))
                self._load_op = op_id
                self._model = model
                self._instance = None
                self._adopted = False
                self._set_state(State.LOADING, out)
                return True
        return False

    def _supersede_load(self, out: list[Action]) -> None:
        """L5: stop waiting for the main load (and any draft load) in flight."""
        for attr in ("_load_op", "_draft_op"):
            op_id: int | None = getattr(self, attr)
            if op_id is not None:
                self._ops[op_id].superseded = True
                out.append(CancelLoad(op_id))
                setattr(self, attr, None)

    def _unload_main(
        self, reason: str, now: float, out: list[Action], request: int | None = None
    ) -> None:
        """Unload our loaded model (state LOADED, so no stream is open)."""
        assert self._model is not None and self._instance is not None
        self._idle_at = self._idle_from = None
        op = self._new_op(
            _Op("unload", self._model, now, instance_id=self._instance, reason=reason)
        )
        if request is not None:
            self._ops[op].requests.append(request)
            self._requests[request] = _Request({op})
        self._unload_op = op
        out.append(StartUnload(op, self._model, self._instance, reason))
        self._set_state(State.UNLOADING, out)
        self._drop_draft(reason, now, out)

    def _drop_draft(self, reason: str, now: float, out: list[Action]) -> None:
        """L15: the draft we loaded goes together with the main model."""
        if self._draft_op is not None:
            self._ops[self._draft_op].superseded = True
            out.append(CancelLoad(self._draft_op))
            self._draft_op = None
        if self._draft is not None:
            model, instance = self._draft
            self._draft = None
            self._unload_background(model, instance, reason, now, out)

    def _unload_background(
        self,
        model: str,
        instance: str,
        reason: str,
        now: float,
        out: list[Action],
        requests: list[int] | None = None,
    ) -> None:
        """An unload that does not move the main state (draft, stray, named model)."""
        if self._streams:
            self._deferred.append((model, instance, reason, list(requests or ())))
            return
        op = self._new_op(_Op("unload", model, now, instance_id=instance, reason=reason))
        self._ops[op].requests.extend(requests or ())
        for request in requests or ():
            self._requests[request].ops.add(op)
        out.append(StartUnload(op, model, instance, reason))

    # --- streams, activity, idle --------------------------------------------

    def _stream_started(self, stream: int, out: list[Action]) -> None:
        if not self._hands_on() or stream in self._streams:
            return
        self._streams.add(stream)
        self._idle_at = self._idle_from = None  # L9
        if self._state is State.LOADED:
            self._set_state(State.STREAMING, out)

    def _stream_ended(self, stream: int, now: float, out: list[Action]) -> None:
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        if self._streams:
            return
        self._flush_deferred(now, out)
        if self._state is not State.STREAMING:
            return
        self._set_state(State.LOADED, out)
        queued, self._queued = self._queued, None
        if queued is not None and queued != self._model:
            self._begin_switch(queued, now, out)
        else:
            self._restart_idle(now)  # L9

    def _flush_deferred(self, now: float, out: list[Action]) -> None:
        deferred, self._deferred = self._deferred, []
        for model, instance, reason, requests in deferred:
            self._unload_background(model, instance, reason, now, out, requests)

    def _restart_idle(self, now: float) -> None:
        self._idle_from = now
        timeout = self.settings.idle_timeout
        self._idle_at = now + timeout if timeout > 0 else None

    def _fire_due(self, now: float, out: list[Action]) -> None:
        if self._debounce_at is not None and now >= self._debounce_at:
            target = self._debounce_target
            self._cancel_debounce()
            if target is not None:
                self._begin_switch(target, now, out)
        if self._idle_at is not None and now >= self._idle_at and self._state is State.LOADED:
            self._wanted = None  # L11: ejected on purpose; do not restore it after an outage
            self._unload_main("idle", now, out)

    # --- engine, commands, settings -----------------------------------------

    def _engine_changed(self, name: str, now: float, out: list[Action]) -> None:
        engine = name.strip().lower()
        if not engine or engine == self._engine:
            return
        leaving = self._engine == LMSTUDIO
        self._engine = engine
        out.append(Notify("engine_changed", {"engine": engine}))
        if not leaving:
            return
        # L13: stop acting. The model stays on the server; we just forget it.
        self._cancel_debounce()
        self._queued = self._next = self._wanted = None
        self._idle_at = self._idle_from = None
        self._supersede_load(out)
        if self._unload_op is not None:
            self._unload_op = None  # let it finish in the background; its outcome only notifies
        self._streams.clear()
        self._flush_deferred(now, out)  # strays we made are still ours to clean up
        self._model = self._instance = None
        self._adopted = False
        self._draft = None
        self._set_state(State.IDLE, out)

    def _unload_command(self, cmd: UnloadCommand, now: float, out: list[Action]) -> None:
        target = cmd.model.strip() if cmd.model else None
        if self._streams:
            n = len(self._streams)
            out.append(
                CommandDone(
                    cmd.request,
                    f"{n} stream{'s' if n != 1 else ''} open: lmkeeperd never unloads under a "
                    "stream; try again when they end",
                )
            )
            return
        ours = target is None or (target == self._model and self._hands_on())
        if ours and self._model is not None:
            self._cancel_debounce()
            self._queued = self._next = self._wanted = None
            if self._state is State.LOADED:
                self._unload_main("command", now, out, cmd.request)
            elif self._state is State.LOADING:
                self._supersede_load(out)  # the stray is unloaded when its load returns
                self._model = None
                self._set_state(State.IDLE, out)
                out.append(CommandDone(cmd.request))
            elif self._state is State.UNLOADING and self._unload_op is not None:
                self._requests[cmd.request] = _Request({self._unload_op})
                self._ops[self._unload_op].requests.append(cmd.request)
            else:  # unreachable while the state invariants hold; answer anyway
                out.append(CommandDone(cmd.request, f"cannot unload in state {self._state.value}"))
            return
        if target is None:
            out.append(CommandDone(cmd.request, "nothing is loaded by lmkeeperd"))
            return
        instances = list(self._server.get(target, ()))
        if self._draft is not None and self._draft[0] == target:
            if self._draft[1] not in instances:
                instances.append(self._draft[1])
            self._draft = None
        if not instances:
            out.append(CommandDone(cmd.request, f"model {target!r} is not loaded on the server"))
            return
        self._requests[cmd.request] = _Request(set())
        for instance in instances:
            self._unload_background(target, instance, "command", now, out, [cmd.request])

    def _settings_changed(self, settings: Settings, now: float) -> None:
        self.settings = settings
        if self._state is State.LOADED:
            # A new idle timeout counts from the last activity, not from the edit.
            start = self._idle_from if self._idle_from is not None else now
            self._restart_idle(start)

    # --- the server's view (L17, L18) ---------------------------------------

    def _snapshot(self, snap: ServerSnapshot, now: float, out: list[Action]) -> None:
        self._server = {k: tuple(v) for k, v in snap.loaded.items() if v}
        if self._draft is not None and self._draft[1] not in self._server.get(self._draft[0], ()):
            self._draft = None
        vanished = (
            self._state in (State.LOADED, State.STREAMING)
            and self._model is not None
            and self._instance not in self._server.get(self._model, ())
        )
        if vanished:
            assert self._model is not None
            out.append(Notify("model_vanished", {"model": self._model}))
            lost = self._model
            self._supersede_load(out)  # a draft still loading goes with its main model
            self._model = self._instance = None
            self._adopted = False
            self._idle_at = self._idle_from = None
            self._set_state(State.IDLE, out)
            if not (snap.after_outage and self._wanted == lost):
                self._wanted = None  # unloaded by hand: follow the server, do not fight the user
            queued, self._queued = self._queued, None
            if queued is not None:
                self._begin_switch(queued, now, out)
                return
        if (
            snap.after_outage
            and self._state is State.IDLE
            and self._wanted is not None
            and self._debounce_at is None
        ):
            self._begin_switch(self._wanted, now, out)

    # --- shutdown (L16) -----------------------------------------------------

    def _shutdown(self, now: float, out: list[Action]) -> None:
        self._cancel_debounce()
        self._queued = self._next = None
        self._idle_at = self._idle_from = None
        self._supersede_load(out)
        if self._state is State.LOADING:
            self._model = None
            self._set_state(State.IDLE, out)
        if self.settings.unload_on_exit and self._hands_on() and not self._streams:
            if self._state is State.LOADED:
                self._unload_main("exit", now, out)
            else:
                self._drop_draft("exit", now, out)
        elif self._streams and self._model is not None:
            out.append(
                Notify("kept_loaded_on_exit", {"model": self._model, "streams": len(self._streams)})
            )
        self._stopped = True

    # --- outcomes of our own actions ----------------------------------------

    def _check_legal(self, event: Event) -> None:
        if isinstance(event, LoadFinished | LoadFailed | UnloadFinished | UnloadFailed):
            op = self._ops.get(event.op)
            want = "load" if isinstance(event, LoadFinished | LoadFailed) else "unload"
            if op is None or op.kind != want:
                raise LifecycleError(f"{type(event).__name__} for unknown {want} op {event.op}")

    def _outcome(
        self,
        event: LoadFinished | LoadFailed | UnloadFinished | UnloadFailed,
        now: float,
        out: list[Action],
    ) -> None:
        op = self._ops.pop(event.op)
        match event:
            case LoadFinished():
                self._load_finished(event, op, now, out)
            case LoadFailed():
                self._load_failed(event, op, out)
            case UnloadFinished():
                self._unload_done(event.op, op, None, now, out)
            case UnloadFailed(error=error):
                self._unload_done(event.op, op, error, now, out)

    def _load_finished(self, event: LoadFinished, op: _Op, now: float, out: list[Action]) -> None:
        if op.superseded:
            if not event.adopted:  # L5: the server finished a load nobody wants
                self._unload_background(op.model, event.instance_id, "superseded", now, out)
            return
        fields = {
            "model": op.model,
            "seconds": round(now - op.started, 3),
            "adopted": event.adopted,
            "draft": op.draft,
        }
        out.append(Notify("load_finished", fields))
        if op.draft:
            self._draft_op = None
            if not event.adopted:  # a draft somebody else loaded is not ours to unload
                self._draft = (op.model, event.instance_id)
            return
        self._load_op = None
        self._instance = event.instance_id
        self._adopted = event.adopted
        self.last_error = None
        if event.adopted:  # maybe a stray of ours, waiting on streams to be unloaded: keep it
            self._deferred = [d for d in self._deferred if d[1] != event.instance_id]
        if self._streams:
            self._set_state(State.STREAMING, out)
        else:
            self._set_state(State.LOADED, out)
            self._restart_idle(now)
        draft = self.settings.draft_model.strip()
        if draft and draft != op.model and not self._stopped:
            self._start_load(draft, now, out, draft=True)  # L15

    def _load_failed(self, event: LoadFailed, op: _Op, out: list[Action]) -> None:
        if op.superseded:
            return
        out.append(
            Notify("load_failed", {"model": op.model, "error": event.error, "draft": op.draft})
        )
        if op.draft:
            self._draft_op = None
            return
        self._load_op = None
        self._model = None
        self.last_error = f"load of {op.model} failed: {event.error}"
        if not event.unreachable:
            self._wanted = None  # L6: a retry takes a new selection
        self._set_state(State.IDLE, out)

    def _unload_done(
        self, op_id: int, op: _Op, error: str | None, now: float, out: list[Action]
    ) -> None:
        if error is None:
            out.append(Notify("unloaded", {"model": op.model, "reason": op.reason}))
        else:
            out.append(
                Notify("unload_failed", {"model": op.model, "reason": op.reason, "error": error})
            )
            self.last_error = f"unload of {op.model} failed: {error}"
        for request in op.requests:
            pending = self._requests.get(request)
            if pending is None:
                continue
            pending.ops.discard(op_id)
            if error is not None:
                pending.errors.append(f"{op.model}: {error}")
            if not pending.ops:
                del self._requests[request]
                out.append(CommandDone(request, "; ".join(pending.errors) or None))
        if op_id != self._unload_op:
            return
        # L4/L11: whether or not the unload worked, the model is no longer ours.
        self._unload_op = None
        self._model = self._instance = None
        self._adopted = False
        self._set_state(State.IDLE, out)
        next_model, self._next = self._next, None
        if next_model is not None and not self._stopped:
            self._begin_switch(next_model, now, out)

    # --- helpers ------------------------------------------------------------

    def _new_op(self, op: _Op) -> int:
        self._last_op += 1
        self._ops[self._last_op] = op
        return self._last_op

    def _set_state(self, new: State, out: list[Action]) -> None:
        if new is self._state:
            return
        old, self._state = self._state, new
        out.append(
            Notify("state_changed", {"from": old.value, "to": new.value, "model": self._model})
        )
