"""The lifecycle core: which model to load and unload, and when.

Theory of operation
===================
`Lifecycle` is a pure state machine in the style of h11: it owns no sockets,
no clock, no tasks. The driver (lmkeeperd.daemon) calls
`handle(event, now)` with a monotonic `now` in seconds and performs the
actions it gets back (`StartLoad`, `CancelLoad`, `ResumeLoad`, `StartUnload`,
`Notify`, `CommandDone`); the outcome of each load or unload comes back later as an
event carrying the same `op` id. Between events the driver sleeps until
`next_deadline()` (the debounce, the idle timer or a forced switch) and then hands
in a `Tick`.

The main model (the one selected) moves through five states:

    idle ──select (after debounce)──▶ loading ──LoadFinished──▶ loaded ⇄ streaming
      ▲                                 │ LoadFailed                │ idle timer, switch,
      │◀────────────────────────────────┘                          │ unload command
      │◀──────────UnloadFinished/Failed──── unloading ◀─────────────┘
                                            │ UnloadDeferred (busy) ─▶ streaming

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
- "In use" is a client stream, or LM Studio reporting our instance busy (L19):
  `streaming` means loaded and in use. A busy instance is never unloaded; its
  last-used time feeds the idle timer. An unload of a model that may be in use
  asks the driver to look first (L20); a deferred switch waits at most
  `busy_switch_wait` behind server-only activity, then is forced. Without
  LM Studio's activity the core works from clients alone (L21).
- The idle timer runs only in `loaded` (L9-L11), with the selection's own
  keep-alive when it has one.
- Another engine makes the core hands-off until LM Studio comes back (L13).
- Server snapshots (L17, L18): a model that vanished from the server is
  forgotten; after an outage the model we wanted is loaded again, since a
  server restart forgets every model.
- Adopted models (already loaded when selected) count as ours: they are the
  selected model, and the user asked lmkeeperd to manage it. Any other model
  on the server is never unloaded, except by a command that names it (L18),
  or when the driver reports it as one lmkeeperd started (OwnStray, L22).

An event that cannot be legal (an outcome for an op that was never issued)
raises `LifecycleError` and changes nothing. Everything a user can send
(selections, stream ends for unknown ids, ...) is legal and at worst ignored.
The state and its read-only view (status, explain) live in view.py; plain records
in bookkeeping.py and explain.py.
"""

from __future__ import annotations

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
from lmkeeperd.core.bookkeeping import (
    LOOK_FIRST_REASONS,
    UNLOAD_CAUSES,
    Busy,
    Deferred,
    Op,
    Request,
    plural,
)
from lmkeeperd.core.events import (
    Activity,
    ActivitySource,
    EngineChanged,
    Event,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    OwnStray,
    Select,
    ServerActivity,
    ServerSnapshot,
    Settings,
    SettingsChanged,
    Shutdown,
    StreamEnded,
    StreamStarted,
    Tick,
    UnloadCommand,
    UnloadDeferred,
    UnloadFailed,
    UnloadFinished,
)
from lmkeeperd.core.view import LMSTUDIO, LifecycleView, State

# Re-exported: the core's users import it from here (lmkeeperd.core). errors.py is a leaf
# with no imports, so the core stays pure.
from lmkeeperd.errors import LifecycleError as LifecycleError

_OUTCOMES = (LoadFinished, LoadFailed, UnloadFinished, UnloadFailed, UnloadDeferred)


class Lifecycle(LifecycleView):
    """The pure lifecycle core. See the module docstring for how it works.

    Its state and the read-only view status copies are in view.py; every rule is here.
    """

    # --- the one entry point ------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        self._check_legal(event)
        self._now = now
        out: list[Action] = []
        if isinstance(event, _OUTCOMES):
            self._outcome(event, now, out)
            self._fire_due(now, out)
            self._track_busy_wait(now)
            return out
        if self._stopped:
            return out
        # Deadlines that fell due before this event happened first.
        self._fire_due(now, out)
        match event:
            case Select():
                self._select(event, now, out)
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
                self._settings_changed(settings, now, out)
            case MemoryPressure():
                if self._hands_on() and self._state is State.LOADED:
                    self._wanted = None
                    self._unload_main("memory_pressure", now, out)
            case ServerSnapshot():
                self._snapshot(event, now, out)
            case ServerActivity():
                self._server_activity(event, now, out)
            case ActivitySource():
                self._activity_source(event, now, out)
            case OwnStray():
                self._own_stray(event, now, out)
            case Shutdown():
                self._shutdown(now, out)
            case Tick():
                pass
        self._track_busy_wait(now)
        return out

    # --- selection and switching --------------------------------------------

    def _hands_on(self) -> bool:
        return self._engine == LMSTUDIO and not self._stopped

    def _select(self, event: Select, now: float, out: list[Action]) -> None:
        key = event.model.strip()
        if not key:
            return
        if event.keep_alive is not None or event.default_idle or key != self._selected:
            # Issue 13: the keep-alive belongs to this selection; another model's drops it.
            self._keep_alive = None if event.keep_alive is None else (key, event.keep_alive)
        self._selected = key
        self._warn_if_blind(out)
        if not self._hands_on() or not self.settings.auto_load:
            return  # L1: recorded for status, nothing loaded; L13: hands-off
        if key == self._model and self._state in (State.LOADING, State.LOADED, State.STREAMING):
            # L2: already ours. A newer selection of the same model also cancels
            # any switch still waiting (debounce, or queued behind a stream: L7).
            self._swallow(self._debounce_target or self._queued, key, out)
            self._cancel_debounce()
            self._queued = None
            if self._state is State.LOADED:
                self._restart_idle(now)
            return
        if self._state is State.STREAMING:
            self._swallow(self._debounce_target or self._queued, key, out)
            self._cancel_debounce()
            self._queued = key  # L7: only the latest is kept
            return
        self._swallow(self._debounce_target, key, out)
        if self.settings.switch_debounce <= 0:
            self._cancel_debounce()
            self._begin_switch(key, now, out)
        else:
            self._debounce_target = key
            self._debounce_at = now + self.settings.switch_debounce

    def _swallow(self, old: str | None, new: str, out: list[Action]) -> None:
        """Issue 13: say which waiting selection a newer one replaced (logged at debug)."""
        if old is not None and old != new:
            out.append(Notify("selection_superseded", {"model": old, "by": new}))

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
            self._swallow(self._queued, target, out)
            self._queued = target
        elif self._state is State.LOADED:
            self._next = target
            self._unload_main("switch", now, out)
        elif self._state is State.LOADING:
            self._supersede_load(out)
            self._model = None
            self._start_load(target, now, out)
        elif self._state is State.UNLOADING:
            self._swallow(self._next, target, out)
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
            + [
                d.instance_id
                for d in self._deferred
                if d.model == model and d.reason not in ("superseded", "stray")
            ]
        )
        op = self._new_op(Op("load", model, now, draft=draft, config=config))
        out.append(StartLoad(op, model, config, draft=draft, avoid=going))
        out.append(Notify("load_started", {"model": model, "draft": draft}))
        if draft:
            self._draft_op = op
            return
        self._load_op = op
        self._model = model
        self._instance = None
        self._adopted = False
        self._set_state(State.LOADING, out, "selected")

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
                self._set_state(State.LOADING, out, "resumed load")
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
        self,
        reason: str,
        now: float,
        out: list[Action],
        request: int | None = None,
        *,
        forced: bool = False,
    ) -> None:
        """Unload our loaded model: not in use, or a forced switch (L20)."""
        assert self._model is not None and self._instance is not None
        self._idle_at = self._idle_from = None
        op = self._new_op(Op("unload", self._model, now, instance_id=self._instance, reason=reason))
        if request is not None:
            self._ops[op].requests.append(request)
            self._requests[request] = Request({op})
        self._unload_op = op
        look = reason in LOOK_FIRST_REASONS and not forced
        out.append(StartUnload(op, self._model, self._instance, reason, look_first=look))
        cause = UNLOAD_CAUSES.get(reason, reason)
        self._set_state(State.UNLOADING, out, "forced switch" if forced else cause)
        self._drop_draft(reason, now, out, forced=forced)

    def _drop_draft(
        self, reason: str, now: float, out: list[Action], *, forced: bool = False
    ) -> None:
        """L15: the draft we loaded goes together with the main model."""
        if self._draft_op is not None:
            self._ops[self._draft_op].superseded = True
            out.append(CancelLoad(self._draft_op))
            self._draft_op = None
        if self._draft is not None:
            model, instance = self._draft
            self._draft = None
            self._unload_background(model, instance, reason, now, out, forced=forced)

    def _unload_background(
        self,
        model: str,
        instance: str,
        reason: str,
        now: float,
        out: list[Action],
        requests: list[int] | None = None,
        *,
        forced: bool = False,
    ) -> None:
        """An unload that does not move the main state (draft, stray, named model)."""
        if self._streams or instance in self._busy:
            self._deferred.append(Deferred(model, instance, reason, list(requests or ())))
            return
        op = self._new_op(Op("unload", model, now, instance_id=instance, reason=reason))
        self._ops[op].requests.extend(requests or ())
        for request in requests or ():
            self._requests[request].ops.add(op)
        look = reason in LOOK_FIRST_REASONS and not forced
        out.append(StartUnload(op, model, instance, reason, look_first=look))

    # --- streams, activity, idle --------------------------------------------

    def _stream_started(self, stream: int, out: list[Action]) -> None:
        if not self._hands_on() or stream in self._streams:
            return
        self._streams.add(stream)
        self._idle_at = self._idle_from = None  # L9
        if self._state is State.LOADED:
            self._set_state(State.STREAMING, out, "stream started")

    def _stream_ended(self, stream: int, now: float, out: list[Action]) -> None:
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        if not self._streams:
            self._idle_from = now  # our own last activity (L9), should LM Studio still be busy
            self._release(now, now, out, "stream ended")

    def _release(self, now: float, start: float, out: list[Action], cause: str) -> None:
        """Something stopped being in use: run what waited for it (L7, L9, L19)."""
        self._flush_deferred(now, out)
        if self._state is not State.STREAMING or self._in_use():
            return
        self._set_state(State.LOADED, out, cause)
        queued, self._queued = self._queued, None
        if queued is not None and queued != self._model:
            self._begin_switch(queued, now, out)
        else:
            self._restart_idle(start)  # L9

    def _flush_deferred(self, now: float, out: list[Action]) -> None:
        deferred, self._deferred = self._deferred, []
        for d in deferred:
            self._unload_background(d.model, d.instance_id, d.reason, now, out, d.requests)

    def _idle_timeout(self) -> float:
        keep = self.keep_alive
        if keep is not None and self._model == self._selected:
            return keep if keep > 0 else 0.0  # issue 13: 0 never ejects
        return self.settings.idle_timeout

    def _restart_idle(self, now: float) -> None:
        self._idle_from = now
        timeout = self._idle_timeout()
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
        force_at = self._force_at()
        if force_at is not None and now >= force_at and self._waiting_on_server():
            self._force_switch(now, out)

    # --- what LM Studio sees (L19-L21) --------------------------------------

    def _server_activity(self, event: ServerActivity, now: float, out: list[Action]) -> None:
        instance = event.instance_id
        ours = instance == self._instance and self._state in (State.LOADED, State.STREAMING)
        was_busy = instance in self._busy
        if event.busy:
            old = self._busy.get(instance)
            self._busy[instance] = Busy(event.doing, event.queued, old.since if old else now)
            if ours and self._hands_on():
                self._idle_at = None
                if self._state is State.LOADED:
                    self._set_state(State.STREAMING, out, f"server busy: {event.doing}")
            return
        self._busy.pop(instance, None)
        used = None if event.last_used is None else min(event.last_used, now)
        if was_busy:
            # L19: busy -> idle restarts the timer from the later of ours and LM Studio's.
            theirs = used if used is not None else now
            start = theirs if self._idle_from is None else max(self._idle_from, theirs)
            self._release(now, start, out, "server idle")
        elif (
            ours
            and self._state is State.LOADED
            and used is not None
            and used > (self._idle_from if self._idle_from is not None else float("-inf"))
        ):
            self._restart_idle(used)  # L19: LM Studio's last use counts as activity

    def _activity_source(self, event: ActivitySource, now: float, out: list[Action]) -> None:
        if event.available == self._source:
            return
        self._source = event.available
        fields: dict[str, Any] = {"source": self.activity_source, "reason": event.reason}
        out.append(Notify("activity_source_changed", fields))
        if event.available:
            self._blind_warned = False
            return
        # Stale busy flags must never block forever: without the channel, nobody clears them.
        busy, self._busy = self._busy, {}
        self._blind_warned = False
        self._warn_if_blind(out, event.reason)
        if busy:
            self._release(now, now, out, "activity source lost")

    def _warn_if_blind(self, out: list[Action], reason: str | None = None) -> None:
        """L21: one warning per blind spell, when idle eject could cut a hidden generation."""
        keep = self.keep_alive
        timeout = keep if keep is not None else self.settings.idle_timeout
        if self._source is not False or self._blind_warned or timeout <= 0:
            return
        self._blind_warned = True
        advice = (
            "LM Studio's activity cannot be read: clients that talk to LM Studio directly "
            "are invisible, and idle eject may unload a model they use. Use LM Studio 0.3.27 "
            "or newer, check [server] api_token_env, or send clients through lmkeeperd's proxy"
        )
        out.append(Notify("activity_blind", {"reason": reason, "advice": advice}))

    def _track_busy_wait(self, now: float) -> None:
        """L20: when did a switch start waiting on server-only activity (no client stream)?"""
        if not self._waiting_on_server():
            self._busy_wait_from = None
        elif self._busy_wait_from is None:
            self._busy_wait_from = now

    def _waiting_on_server(self) -> bool:
        return (
            self._queued is not None
            and self._state is State.STREAMING
            and not self._streams
            and self._in_use()
        )

    def _force_switch(self, now: float, out: list[Action]) -> None:
        assert self._instance is not None and self._busy_wait_from is not None
        busy = self._busy.pop(self._instance, None)
        fields = {
            "model": self._model,
            "instance_id": self._instance,
            "doing": busy.describe() if busy else "busy",
            "waited_s": round(now - self._busy_wait_from, 3),
        }
        out.append(Notify("switch_forced", fields))
        self._busy_wait_from = None
        self._next, self._queued = self._queued, None
        self._unload_main("switch", now, out, forced=True)

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
        self._set_state(State.IDLE, out, f"engine changed to {engine}")

    def _unload_command(self, cmd: UnloadCommand, now: float, out: list[Action]) -> None:
        target = cmd.model.strip() if cmd.model else None
        if self._streams:
            out.append(
                CommandDone(
                    cmd.request,
                    f"{plural(len(self._streams), 'stream')} open: lmkeeperd never unloads "
                    "under a stream; try again when they end",
                )
            )
            return
        ours = target is None or (target == self._model and self._hands_on())
        if ours and self._model is not None:
            if self._state is State.STREAMING:  # LM Studio says it is busy (L19)
                out.append(CommandDone(cmd.request, self._busy_error(self._model)))
                return
            self._cancel_debounce()
            self._queued = self._next = self._wanted = None
            if self._state is State.LOADED:
                self._unload_main("command", now, out, cmd.request)
            elif self._state is State.LOADING:
                self._supersede_load(out)  # the stray is unloaded when its load returns
                self._model = None
                self._set_state(State.IDLE, out, "unloaded by command")
                out.append(CommandDone(cmd.request))
            elif self._state is State.UNLOADING and self._unload_op is not None:
                self._requests[cmd.request] = Request({self._unload_op})
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
        free = [i for i in instances if i not in self._busy]
        if not free:
            out.append(CommandDone(cmd.request, self._busy_error(target, instances[0])))
            return
        self._requests[cmd.request] = Request(set())
        if len(free) < len(instances):
            busy = next(i for i in instances if i in self._busy)
            self._requests[cmd.request].errors.append(self._busy_error(target, busy))
        for instance in free:
            self._unload_background(target, instance, "command", now, out, [cmd.request])

    def _busy_error(self, model: str, instance: str | None = None) -> str:
        busy = self._busy.get(instance or self._instance or "")
        doing = busy.describe() if busy else "busy"
        return (
            f"{model} is in use on the server ({doing}): lmkeeperd never unloads a model "
            "in use; try again when it is idle"
        )

    def _settings_changed(self, settings: Settings, now: float, out: list[Action]) -> None:
        self.settings = settings
        if self._state is State.LOADED:
            # A new idle timeout counts from the last activity, not from the edit.
            start = self._idle_from if self._idle_from is not None else now
            self._restart_idle(start)
        self._warn_if_blind(out)

    # --- the server's view (L17, L18, L22) ----------------------------------

    def _snapshot(self, snap: ServerSnapshot, now: float, out: list[Action]) -> None:
        self._server = {k: tuple(v) for k, v in snap.loaded.items() if v}
        listed = {i for v in self._server.values() for i in v}
        self._busy = {i: b for i, b in self._busy.items() if i in listed}
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
            self._set_state(State.IDLE, out, "model vanished")
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

    def _own_stray(self, event: OwnStray, now: float, out: list[Action]) -> None:
        """L22: an instance lmkeeperd started and no longer tracks: adopt it or unload it."""
        model, instance = event.model.strip(), event.instance_id
        if instance in self.owned_instances():
            return  # tracked already, or already on its way out: idempotent
        # What we want: a selection still in its debounce counts (after a restart the
        # restored selection may wait there while the journal reports its instance).
        want = self._debounce_target if self._debounce_at is not None else self._wanted
        wanted = self._hands_on() and self.settings.auto_load and want == model
        no_instance = self._state is State.IDLE or (
            self._state is State.LOADING and self._model == model
        )
        if wanted and no_instance:
            self._supersede_load(out)  # its instance becomes a stray when it returns
            self._cancel_debounce()
            self._wanted = self._model = model
            out.append(Notify("stray_adopted", {"model": model, "instance_id": instance}))
            self._took(model, instance, False, now, out, "stray adopted")
            return
        out.append(Notify("stray_found", {"model": model, "instance_id": instance}))
        self._unload_background(model, instance, "stray", now, out)

    # --- shutdown (L16) -----------------------------------------------------

    def _shutdown(self, now: float, out: list[Action]) -> None:
        self._cancel_debounce()
        self._queued = self._next = None
        self._idle_at = self._idle_from = None
        self._supersede_load(out)
        if self._state is State.LOADING:
            self._model = None
            self._set_state(State.IDLE, out, "exit")
        in_use = bool(self._streams) or self._state is State.STREAMING  # L7, L19
        if self.settings.unload_on_exit and self._hands_on() and not in_use:
            if self._state is State.LOADED:
                self._unload_main("exit", now, out)
            else:
                self._drop_draft("exit", now, out)
        elif in_use and self._model is not None:
            fields: dict[str, Any] = {"model": self._model, "streams": len(self._streams)}
            if self.server_busy:
                fields["doing"] = self.server_busy
            out.append(Notify("kept_loaded_on_exit", fields))
        self._stopped = True

    # --- outcomes of our own actions ----------------------------------------

    def _check_legal(self, event: Event) -> None:
        if isinstance(event, _OUTCOMES):
            op = self._ops.get(event.op)
            want = "load" if isinstance(event, LoadFinished | LoadFailed) else "unload"
            if op is None or op.kind != want:
                raise LifecycleError(f"{type(event).__name__} for unknown {want} op {event.op}")

    def _outcome(
        self,
        event: LoadFinished | LoadFailed | UnloadFinished | UnloadFailed | UnloadDeferred,
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
                self._busy.pop(op.instance_id, None)
                self._unload_done(event.op, op, None, now, out)
            case UnloadFailed(error=error):
                self._unload_done(event.op, op, error, now, out)
            case UnloadDeferred():
                self._unload_deferred(event, op, now, out)

    def _load_finished(self, event: LoadFinished, op: Op, now: float, out: list[Action]) -> None:
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
        cause = "adopted" if event.adopted else "loaded"
        self._took(op.model, event.instance_id, event.adopted, now, out, cause)

    def _took(
        self, model: str, instance: str, adopted: bool, now: float, out: list[Action], cause: str
    ) -> None:
        """The main model is ours now: loaded, adopted (L17) or a stray taken back (L22)."""
        self._instance = instance
        self._adopted = adopted
        self.last_error = None
        # Maybe a stray of ours, waiting on streams to be unloaded: keep it.
        self._deferred = [d for d in self._deferred if d.instance_id != instance]
        if self._in_use():
            self._set_state(State.STREAMING, out, cause)
        else:
            self._set_state(State.LOADED, out, cause)
            self._restart_idle(now)
        draft = self.settings.draft_model.strip()
        if draft and draft != model and not self._stopped:
            self._start_load(draft, now, out, draft=True)  # L15

    def _load_failed(self, event: LoadFailed, op: Op, out: list[Action]) -> None:
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
        if not (event.unreachable or event.abandoned):
            # L6: a retry takes a new selection. An abandoned load may still land: it is
            # adopted then (OwnStray, L22), so the model stays wanted.
            self._wanted = None
        self._set_state(State.IDLE, out, f"load failed: {event.error}")

    def _unload_done(
        self, op_id: int, op: Op, error: str | None, now: float, out: list[Action]
    ) -> None:
        if error is None:
            out.append(Notify("unloaded", {"model": op.model, "reason": op.reason}))
        else:
            out.append(
                Notify("unload_failed", {"model": op.model, "reason": op.reason, "error": error})
            )
            self.last_error = f"unload of {op.model} failed: {error}"
        self._answer(op_id, op, error, out)
        if op_id != self._unload_op:
            return
        # L4/L11: whether or not the unload worked, the model is no longer ours.
        self._unload_op = None
        self._model = self._instance = None
        self._adopted = False
        cause = UNLOAD_CAUSES.get(op.reason, op.reason)
        if self._cause and self._cause[0] == "forced switch":
            cause = "forced switch"
        self._set_state(State.IDLE, out, cause if error is None else f"{cause} ({error})")
        next_model, self._next = self._next, None
        if next_model is not None and not self._stopped:
            self._begin_switch(next_model, now, out)

    def _answer(self, op_id: int, op: Op, error: str | None, out: list[Action]) -> None:
        """Answer the unload commands that waited for this op, once all their ops are done."""
        for request in op.requests:
            pending = self._requests.get(request)
            if pending is None:
                continue
            pending.ops.discard(op_id)
            if error is not None:
                pending.errors.append(
                    error if error.startswith(op.model) else f"{op.model}: {error}"
                )
            if not pending.ops:
                del self._requests[request]
                out.append(CommandDone(request, "; ".join(pending.errors) or None))

    def _unload_deferred(
        self, event: UnloadDeferred, op: Op, now: float, out: list[Action]
    ) -> None:
        """L20: the driver looked and the instance was busy; nothing was sent."""
        busy = Busy(event.doing, event.queued, now)
        self._busy[op.instance_id] = busy
        out.append(
            Notify(
                "unload_deferred",
                {
                    "model": op.model,
                    "instance_id": op.instance_id,
                    "reason": op.reason,
                    "doing": busy.describe(),
                },
            )
        )
        self._answer(event.op, op, self._busy_error(op.model, op.instance_id), out)
        if event.op != self._unload_op:
            if op.reason != "command":  # a command was answered; a draft/stray waits for idle
                self._deferred.append(Deferred(op.model, op.instance_id, op.reason))
            return
        # The main model stays ours and in use. A switch waits queued behind it (and may be
        # forced after busy_switch_wait); an idle or pressure eject, or a command, is dropped.
        self._unload_op = None
        self._queued, self._next = self._next, None
        if self._queued == self._model:
            self._queued = None
        self._wanted = self._queued or (None if op.reason == "command" else self._model)
        self._set_state(State.STREAMING, out, f"server busy: {busy.describe()}")

    # --- helpers ------------------------------------------------------------

    def _new_op(self, op: Op) -> int:
        self._last_op += 1
        self._ops[self._last_op] = op
        return self._last_op

    def _set_state(self, new: State, out: list[Action], cause: str) -> None:
        if new is self._state:
            return
        old, self._state = self._state, new
        self._cause = (cause, self._now)
        out.append(
            Notify("state_changed", {"from": old.value, "to": new.value, "model": self._model})
        )
