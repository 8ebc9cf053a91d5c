"""The lifecycle core: which model to load and unload, and when.

Theory of operation
===================
`Lifecycle` is a pure state machine in the style of h11: it owns no sockets,
no clock, no tasks. The driver (lmkeeperd.daemon) calls `handle(event, now)`
with a monotonic `now` in seconds and performs the actions it gets back
(`StartLoad`, `CancelLoad`, `ResumeLoad`, `StartUnload`, `Notify`, `CommandDone`);
each load's or unload's outcome comes back later as an event with its `op` id.
Between events the driver sleeps until `next_deadline()` (debounce, idle timer,
forced switch), then hands in a `Tick`; other roles read the core via `CoreView`.

The state is four records (records.py, ledger.py): the resident (`_main`: model,
instance, phase, op, idle timer, draft), the intent (`_intent`: selection,
keep-alive, debounce, queue, next), the usage (`_usage`: client streams,
LM Studio's busy instances) and the ledger of ops (`_ledger`). A resident's
phase moves only through the table in phases.py:

    idle ──select (after debounce)──▶ loading ──LoadFinished──▶ loaded ⇄ streaming
      ▲                                 │ LoadFailed                │ idle timer, switch,
      │◀────────────────────────────────┘                          │ unload command
      │◀──────────UnloadFinished/Failed──── unloading ◀─────────────┘
                                            │ UnloadDeferred (busy) ─▶ streaming

Which model to load and which to evict is placement.py's answer (L25); this
module turns it into actions, in L4's order.

Rules (ids from lifecycle-spec.md):
- A selection waits `switch_debounce` for a newer one (L3); selecting what is
  already loaded or loading only refreshes the idle timer (L2).
- A switch unloads our model first, then loads the new one, even when the
  unload failed (L4).
- One load at a time (L30): LM Studio cannot cancel a load, so a switch made
  while a load is in flight waits (queued, latest wins) for it to land; the
  model that landed is then a resident like any other, and the switch that
  follows unloads it (L4). A load given up by a command, another engine or an
  adopted stray is superseded (L5): the driver stops waiting, it still blocks
  the next load until its outcome arrives, and if the server finishes it the
  core unloads the stray instance. Selecting again a model whose superseded
  load is still in flight waits for that load again (`ResumeLoad`) instead of
  starting a second one, and a stray of it still waiting for streams to end is
  adopted and kept: never two instances. A load the driver abandoned
  (load_timeout) stops blocking; its model counts in placement's budget until
  it lands (OwnStray, L22) or an outage forgets it.
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
- Several residents (residency.py, pinned.py): selecting one loads nothing
  (L24); room is made by `max_loaded` and the budget, evicting the least
  recently used idle resident (L25); make-before-break when chosen (L26); a
  refused load evicts and retries (L27); each resident has its own idle timer
  and pinned ones never go (L28). With `max_loaded` 1, nothing pinned and no
  budget (the defaults) a switch is L4's.
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
What LM Studio sees and the server's view (L17-L22) are in server_rules.py, the
unload command (L7, L18, L19) in commands.py.
"""

from __future__ import annotations

from typing import Any

from lmkeeperd.core.actions import (
    Action,
    CancelLoad,
    Notify,
    ResumeLoad,
    StartLoad,
    StartUnload,
)
from lmkeeperd.core.events import (
    Activity,
    ActivitySource,
    EngineChanged,
    Event,
    LoadFailed,
    LoadFinished,
    MemoryPressure,
    ModelEstimates,
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
from lmkeeperd.core.ledger import LOOK_FIRST_REASONS, UNLOAD_CAUSES, Deferred, Op
from lmkeeperd.core.phases import State, Trigger
from lmkeeperd.core.pinned import PinnedRules
from lmkeeperd.core.records import Busy
from lmkeeperd.core.view import LMSTUDIO

# Re-exported: the core's users import it from here (lmkeeperd.core). errors.py is a leaf
# with no imports, so the core stays pure.
from lmkeeperd.errors import LifecycleError as LifecycleError

_OUTCOMES = (LoadFinished, LoadFailed, UnloadFinished, UnloadFailed, UnloadDeferred)


class Lifecycle(PinnedRules):
    """The pure lifecycle core. See the module docstring for how it works."""

    # --- the one entry point ------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        self._check_legal(event)
        self._now = now
        out: list[Action] = []
        if isinstance(event, _OUTCOMES):
            self._outcome(event, now, out)
            self._fire_due(now, out)
            self._room_freed(now, out)  # L25: what was on its way out may be gone now
            self._track_busy_wait(now)
            return out
        if self._stopped:
            return out
        # Deadlines that fell due before this event happened first.
        self._fire_due(now, out)
        match event:
            case Select():
                self._select(event, now, out)
            case StreamStarted(stream=stream, model=model):
                self._stream_started(stream, model, now, out)
            case StreamEnded(stream=stream):
                self._stream_ended(stream, now, out)
            case Activity(model=model):
                if self._used_by_client(model, now):
                    pass  # L24: a resident beside the current one was used
                elif self._hands_on() and self._main.phase is State.LOADED:
                    self._restart_idle(now)
            case EngineChanged(name=name):
                self._engine_changed(name, now, out)
            case UnloadCommand():
                self._unload_command(event, now, out)
            case SettingsChanged(settings=settings):
                self._settings_changed(settings, now, out)
            case MemoryPressure():
                if self._hands_on() and self._main.phase is State.LOADED:
                    self._intent.wanted = None
                    self._unload_main("memory_pressure", now, out)
            case ServerSnapshot():
                self._snapshot(event, now, out)
                self._pins_on_snapshot(event, now, out)  # L28
            case ModelEstimates(estimates=estimates):
                self._estimates.update(estimates)  # L25
            case ServerActivity():
                self._server_activity(event, now, out)
            case ActivitySource():
                self._activity_source(event, now, out)
            case OwnStray(model=model, instance_id=instance):
                if not self._pin_stray(model.strip(), instance, now, out):  # L28
                    self._own_stray(event, now, out)
            case Shutdown():
                self._shutdown(now, out)
            case Tick():
                pass
        self._load_pins_waiting(now, out)  # L28: after a selection that loaded nothing
        self._room_freed(now, out)  # L25
        self._track_busy_wait(now)
        return out

    # --- selection and switching --------------------------------------------

    def _hands_on(self) -> bool:
        return self._engine == LMSTUDIO and not self._stopped

    def _select(self, event: Select, now: float, out: list[Action]) -> None:
        key = event.model.strip()
        if not key:
            return
        intent = self._intent
        if event.keep_alive is not None or event.default_idle or key != intent.selected:
            # The keep-alive belongs to this selection; another model's drops it.
            intent.keep_alive = None if event.keep_alive is None else (key, event.keep_alive)
        intent.selected = key
        self._warn_if_blind(out)
        if not self._hands_on() or not self._settings.auto_load:
            return  # L1: recorded for status, nothing loaded; L13: hands-off
        if self._main.holds(key):
            # L2: already ours. A newer selection of the same model also cancels
            # any switch still waiting (debounce, or queued behind a stream: L7).
            self._swallow(intent.debounce_target or intent.queued, key, out)
            intent.cancel_debounce()
            intent.queued = None
            intent.wanted = key  # a switch it replaced had made another model wanted
            if self._main.phase is State.LOADED:
                self._restart_idle(now)
            return
        if self._main.phase is State.STREAMING and not self._make_before_break(key):
            self._swallow(intent.debounce_target or intent.queued, key, out)
            intent.cancel_debounce()
            intent.queued = key  # L7: only the latest is kept
            return
        self._swallow(intent.debounce_target, key, out)
        if self._settings.switch_debounce <= 0:
            intent.cancel_debounce()
            self._begin_switch(key, now, out)
        else:
            intent.debounce_target = key
            intent.debounce_at = now + self._settings.switch_debounce

    def _swallow(self, old: str | None, new: str, out: list[Action]) -> None:
        """Say which waiting selection a newer one replaced (logged at debug)."""
        if old is not None and old != new:
            out.append(Notify("selection_superseded", {"model": old, "by": new}))

    def _begin_switch(self, target: str, now: float, out: list[Action]) -> None:
        if not self._hands_on() or not self._settings.auto_load:
            return
        intent, main = self._intent, self._main
        intent.wanted = target
        if main.holds(target):
            if main.phase is State.LOADED:
                self._restart_idle(now)
            return
        if main.phase is State.UNLOADING:
            self._swallow(intent.next, target, out)
            intent.next = target
            return
        if main.phase is State.LOADING:  # L30: LM Studio cannot cancel it; it lands first
            self._swallow(intent.queued, target, out)
            intent.queued = target
            return
        self._place(target, now, out)  # L24, L25 (residency.py)

    def _start_load(
        self, model: str, now: float, out: list[Action], *, draft: bool = False
    ) -> None:
        config = dict(self._settings.load_config)
        if not draft and self._resume_load(model, config, out):
            return
        if self._ledger.load_in_flight() is not None:  # L30: one load at a time
            if draft:
                self._main.draft_due = True
            else:
                self._swallow(self._intent.queued, model, out)
                self._intent.queued = model
            return
        going = self._ledger.unloading(model)
        op = self._ledger.add(Op("load", model, now, draft=draft, config=config))
        out.append(StartLoad(op, model, config, draft=draft, avoid=going))
        out.append(Notify("load_started", {"model": model, "draft": draft}))
        if draft:
            self._main.draft_op = op
            return
        self._main.take(model, op)
        self._move("load", out, "selected")

    def _resume_load(self, model: str, config: dict[str, Any], out: list[Action]) -> bool:
        """Wait again for a superseded load of `model` still in flight, rather than start one.

        Switching away and back while a slow load runs (A, B, A) would otherwise have two
        loads of A in flight, and both instances on the server when they finish: the chaos
        soak (tests/daemon/test_e2e_soak.py) saw four copies of one model at once. The load under
        way is as good as a new one, and done sooner; only one with other load settings is not.
        """
        ops = self._ledger.ops
        if self._ledger.unloading(model):
            return False  # it may adopt the instance on its way out: load anew after (L30)
        for op_id in sorted(ops, reverse=True):
            op = ops[op_id]
            if op.kind == "load" and op.superseded and not op.draft and op.model == model:
                if op.config != config:
                    continue
                op.superseded = op.pinned = False  # the current model's load now (L24, L28)
                out.append(ResumeLoad(op_id))
                out.append(Notify("load_started", {"model": model, "draft": False}))
                self._main.take(model, op_id)
                self._move("load", out, "resumed load")
                return True
        return False

    def _supersede_load(self, out: list[Action]) -> None:
        """L5: stop waiting for the main load (and any draft load) in flight."""
        main = self._main
        if main.phase is State.LOADING and main.op is not None:
            self._ledger.ops[main.op].superseded = True
            out.append(CancelLoad(main.op))
            main.op = None
        self._cancel_draft_load(out)

    def _cancel_draft_load(self, out: list[Action]) -> None:
        if self._main.draft_op is not None:
            self._ledger.ops[self._main.draft_op].superseded = True
            out.append(CancelLoad(self._main.draft_op))
            self._main.draft_op = None

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
        main = self._main
        assert main.model is not None and main.instance is not None
        main.stop_idle()
        op = self._ledger.add(
            Op("unload", main.model, now, instance_id=main.instance, reason=reason)
        )
        if request is not None:
            self._ledger.wait_on(request, op)
        main.op = op
        look = reason in LOOK_FIRST_REASONS and not forced
        out.append(StartUnload(op, main.model, main.instance, reason, look_first=look))
        cause = UNLOAD_CAUSES.get(reason, reason)
        self._move("unload", out, "forced switch" if forced else cause)
        self._drop_draft(reason, now, out, forced=forced)

    def _drop_draft(
        self, reason: str, now: float, out: list[Action], *, forced: bool = False
    ) -> None:
        """L15: the draft we loaded goes together with the main model."""
        self._cancel_draft_load(out)
        self._main.draft_due = False
        if self._main.draft is not None:
            model, instance = self._main.draft
            self._main.draft = None
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
        if self._usage.streams or instance in self._usage.busy:
            self._ledger.deferred.append(Deferred(model, instance, reason, list(requests or ())))
            return
        op = self._ledger.add(Op("unload", model, now, instance_id=instance, reason=reason))
        for request in requests or ():
            self._ledger.wait_on(request, op)
        look = reason in LOOK_FIRST_REASONS and not forced
        out.append(StartUnload(op, model, instance, reason, look_first=look))

    # --- streams, activity, idle --------------------------------------------

    def _stream_started(
        self, stream: int, model: str | None, now: float, out: list[Action]
    ) -> None:
        if not self._hands_on() or stream in self._usage.streams:
            return
        if self._used_by_client(model, now, stream=stream):
            return  # L28: another resident's use; the current model's timer runs on
        # The current model's use (L9); a stream naming no resident counts as it (L7).
        self._usage.streams[stream] = self._main.model
        self._main.stop_idle()
        if self._main.phase is State.LOADED:
            self._move("in_use", out, "stream started")

    def _stream_ended(self, stream: int, now: float, out: list[Action]) -> None:
        if stream not in self._usage.streams:
            return
        model = self._usage.streams.pop(stream)
        self._used_by_client(model, now, ended=True)
        if self._usage.uses(model):
            return  # L28: that model is still in use
        if model is None or model == self._main.model:
            self._main.last_use = now  # our own last activity (L9), should LM Studio be busy
        self._release(now, now, out, "stream ended")

    def _release(self, now: float, start: float, out: list[Action], cause: str) -> None:
        """Something stopped being in use: run what waited for it (L7, L9, L19)."""
        self._flush_deferred(now, out)
        if self._main.phase is not State.STREAMING:
            self._retry_queued(now, out)  # L25: maybe a resident beside it became idle
            return
        if self._in_use():
            return
        self._move("free", out, cause)
        queued, self._intent.queued = self._intent.queued, None
        if queued is not None and queued != self._main.model:
            self._begin_switch(queued, now, out)
        else:
            self._restart_idle(start)  # L9
        self._trim(now, out)  # L26: an old model kept while in use goes now

    def _flush_deferred(self, now: float, out: list[Action]) -> None:
        deferred, self._ledger.deferred = self._ledger.deferred, []
        main = self._main
        for d in deferred:
            if main.phase is State.LOADING and d.model == main.model and d.reason == "stray":
                self._ledger.deferred.append(d)  # the load may adopt it (L22): after it lands
                continue
            self._unload_background(d.model, d.instance_id, d.reason, now, out, d.requests)

    def _restart_idle(self, now: float) -> None:
        keep = self._intent.keep_alive_of(self._main.model)
        timeout = self._settings.idle_timeout if keep is None else keep  # 0 never ejects
        if self._main.model in self._settings.pinned:
            timeout = 0.0  # L28: pinned models never idle out
        self._main.restart_idle(now, timeout)

    def _fire_due(self, now: float, out: list[Action]) -> None:
        intent, main = self._intent, self._main
        if intent.debounce_at is not None and now >= intent.debounce_at:
            target = intent.debounce_target
            intent.cancel_debounce()
            if target is not None:
                self._begin_switch(target, now, out)
        if main.idle_at is not None and now >= main.idle_at and main.phase is State.LOADED:
            intent.wanted = None  # L11: ejected on purpose; do not restore it after an outage
            self._unload_main("idle", now, out)
        self._fire_residents(now, out)  # L28
        force_at = self._force_at()
        if force_at is not None and now >= force_at and self._waiting_on_server():
            self._force_switch(now, out)

    # --- engine, settings ---------------------------------------------------

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
        self._intent.drop_pending()
        self._intent.wanted = None
        self._main.stop_idle()
        self._supersede_load(out)
        # An unload in flight finishes in the background; its outcome only notifies.
        self._usage.streams.clear()
        self._drop_pins(out)
        self._flush_deferred(now, out)  # strays we made are still ours to clean up
        self._main.forget()
        self._main.draft = None
        self._others_gone(now, out, None)  # they stay on the server, forgotten
        self._move("hands_off", out, f"engine changed to {engine}")

    def _settings_changed(self, settings: Settings, now: float, out: list[Action]) -> None:
        old, self._settings = self._settings, settings
        if self._main.phase is State.LOADED:
            # A new idle timeout counts from the last activity, not from the edit.
            last = self._main.last_use
            self._restart_idle(last if last is not None else now)
        self._warn_if_blind(out)
        self._pins_changed(old, now, out)  # L28 (pinned.py)

    # --- shutdown (L16) -----------------------------------------------------

    def _shutdown(self, now: float, out: list[Action]) -> None:
        main = self._main
        self._intent.drop_pending()
        main.stop_idle()
        self._supersede_load(out)
        self._drop_pins(out)
        if main.phase is State.LOADING:
            main.model = None
            self._move("dropped", out, "exit")
        in_use = bool(self._usage.streams) or main.phase is State.STREAMING  # L7, L19
        if self._settings.unload_on_exit and self._hands_on() and not in_use:
            self._others_gone(now, out, "exit")
            if main.phase is State.LOADED:
                self._unload_main("exit", now, out)
            else:
                self._drop_draft("exit", now, out)
        elif in_use and main.model is not None:
            fields: dict[str, Any] = {"model": main.model, "streams": len(self._usage.streams)}
            if self.server_busy:
                fields["doing"] = self.server_busy
            out.append(Notify("kept_loaded_on_exit", fields))
        self._others_gone(now, out, None)  # kept loaded: their timers stop with us
        self._stopped = True

    # --- outcomes of our own actions ----------------------------------------

    def _check_legal(self, event: Event) -> None:
        if isinstance(event, _OUTCOMES):
            op = self._ledger.ops.get(event.op)
            want = "load" if isinstance(event, LoadFinished | LoadFailed) else "unload"
            if op is None or op.kind != want:
                raise LifecycleError(f"{type(event).__name__} for unknown {want} op {event.op}")

    def _outcome(
        self,
        event: LoadFinished | LoadFailed | UnloadFinished | UnloadFailed | UnloadDeferred,
        now: float,
        out: list[Action],
    ) -> None:
        op = self._ledger.ops.pop(event.op)
        match event:
            case LoadFinished():
                self._load_finished(event, op, now, out)
                self._after_load(now, out)
            case LoadFailed():
                self._load_failed(event, op, out)
                self._after_load(now, out)
            case UnloadFinished():
                self._usage.busy.pop(op.instance_id, None)
                self._unload_done(event.op, op, None, now, out)
            case UnloadFailed(error=error):
                self._unload_done(event.op, op, error, now, out)
            case UnloadDeferred():
                self._unload_deferred(event, op, now, out)

    def _load_finished(self, event: LoadFinished, op: Op, now: float, out: list[Action]) -> None:
        if op.superseded:
            # L5: the server finished a load nobody wants (L28: a pinned model's is kept)
            if not event.adopted and not self._keep_pin(op.model, event.instance_id, now, out):
                self._unload_background(op.model, event.instance_id, "superseded", now, out)
            return
        fields = {
            "model": op.model,
            "seconds": round(now - op.started, 3),
            "adopted": event.adopted,
            "draft": op.draft,
        }
        out.append(Notify("load_finished", fields))
        if op.pinned:
            self._pin_landed(op, event, now, out)  # L28
            return
        if op.draft:
            self._main.draft_op = None
            if not event.adopted:  # a draft somebody else loaded is not ours to unload
                self._main.draft = (op.model, event.instance_id)
            return
        self._main.op = None
        cause = "adopted" if event.adopted else "loaded"
        self._took(op.model, event.instance_id, event.adopted, now, out, cause)

    def _took(
        self, model: str, instance: str, adopted: bool, now: float, out: list[Action], cause: str
    ) -> None:
        """The main model is ours now: loaded, adopted (L17) or a stray taken back (L22)."""
        self._main.instance = instance
        self._main.adopted = adopted
        self._last_error = None
        # Maybe a stray of ours, waiting on streams to be unloaded: keep it.
        self._ledger.keep(instance)
        if self._intent.queued == model:
            self._intent.queued = None
        if self._in_use():
            self._move("landed_in_use", out, cause)
        else:
            self._move("landed", out, cause)
            self._restart_idle(now)
        if self._intent.queued is None:  # no draft for a model a switch unloads next
            self._start_draft(now, out)
        self._trim(now, out)  # L26: a model kept while this one loaded goes now

    def _start_draft(self, now: float, out: list[Action]) -> None:
        """L15: the draft model goes with the main one."""
        draft = self._settings.draft_model.strip()
        if draft and draft != self._main.model and not self._stopped:
            self._start_load(draft, now, out, draft=True)

    def _after_load(self, now: float, out: list[Action]) -> None:
        """L30: a load landed or failed; what waited for it goes on, once none is in flight."""
        if not self._stopped:  # a stray the load did not adopt goes, draft loading or not
            self._flush_deferred(now, out)  # (L22: never two instances of a model)
        if self._ledger.load_in_flight() is not None or self._stopped:
            return
        self._trim(now, out)  # L26: the old model goes once the new one landed
        main, intent = self._main, self._intent
        if intent.queued is not None and main.phase in (State.IDLE, State.LOADED):
            queued, intent.queued = intent.queued, None
            self._begin_switch(queued, now, out)  # L4: a landed model is unloaded first
        elif main.serving and main.draft_due:
            main.draft_due = False
            self._start_draft(now, out)
        self._load_pins(now, out)  # L28, one at a time (L30)

    def _load_failed(self, event: LoadFailed, op: Op, out: list[Action]) -> None:
        if event.abandoned:
            self._ledger.landing.append(op)  # it may still land (L22, L30)
        if op.superseded:
            return
        main = self._main
        if event.refused:
            out.append(Notify("load_refused", {"model": op.model, "message": event.error}))
        refused = event.refused and not op.draft and not op.pinned
        if refused and self._refused(op.model, event.error, self._now, out):  # L27: evict, retry
            main.forget()
            self._move("load_failed", out, f"load refused: {event.error}")
            return
        out.append(
            Notify("load_failed", {"model": op.model, "error": event.error, "draft": op.draft})
        )
        if op.pinned:
            return
        if op.draft:
            self._main.draft_op = None
            return
        self._main.forget()
        self._last_error = f"load of {op.model} failed: {event.error}"
        if not (event.unreachable or event.abandoned) and self._intent.wanted == op.model:
            # L6: a retry takes a new selection. An abandoned load may still land: it is
            # adopted then (OwnStray, L22), so the model stays wanted.
            self._intent.wanted = None
        self._move("load_failed", out, f"load failed: {event.error}")

    def _unload_done(
        self, op_id: int, op: Op, error: str | None, now: float, out: list[Action]
    ) -> None:
        if error is None:
            out.append(Notify("unloaded", {"model": op.model, "reason": op.reason}))
        else:
            out.append(
                Notify("unload_failed", {"model": op.model, "reason": op.reason, "error": error})
            )
            self._last_error = f"unload of {op.model} failed: {error}"
        out.extend(self._ledger.answer(op_id, op, error))
        self._evicted_for_refusal(op_id, True, now, out)  # L27
        if self._main.phase is not State.UNLOADING or op_id != self._main.op:
            return
        # L4/L11: whether or not the unload worked, the model is no longer ours.
        self._main.forget()
        cause = UNLOAD_CAUSES.get(op.reason, op.reason)
        if self._cause and self._cause[0] == "forced switch":
            cause = "forced switch"
        self._move("unloaded", out, cause if error is None else f"{cause} ({error})")
        next_model, self._intent.next = self._intent.next, None
        if next_model is not None and not self._stopped:
            self._begin_switch(next_model, now, out)

    def _unload_deferred(
        self, event: UnloadDeferred, op: Op, now: float, out: list[Action]
    ) -> None:
        """L20: the driver looked and the instance was busy; nothing was sent."""
        busy = Busy(event.doing, event.queued, now)
        self._usage.busy[op.instance_id] = busy
        fields = {
            "model": op.model,
            "instance_id": op.instance_id,
            "reason": op.reason,
            "doing": busy.describe(),
        }
        out.append(Notify("unload_deferred", fields))
        out.extend(self._ledger.answer(event.op, op, self._busy_error(op.model, op.instance_id)))
        main, intent = self._main, self._intent
        if main.phase is not State.UNLOADING or event.op != main.op:
            if op.reason != "command" or not op.requests:  # a draft/stray waits for idle
                self._ledger.deferred.append(Deferred(op.model, op.instance_id, op.reason))
                self._evicted_for_refusal(event.op, False, now, out)  # L27
            elif op.resident is not None and op.model not in (main.model, *self._others):
                self._others[op.model] = op.resident  # in use: it stays a resident (L24)
            elif op.resident is not None:  # its model is held again: never two (L22)
                self._ledger.deferred.append(Deferred(op.model, op.instance_id, "stray"))
            return
        # The main model stays ours and in use. A switch waits queued behind it (and may be
        # forced after busy_switch_wait); an idle or pressure eject, or a command, is dropped.
        main.op = None
        intent.queued, intent.next = intent.next, None
        if intent.queued == main.model:
            intent.queued = None
        intent.wanted = intent.queued or (None if op.reason == "command" else main.model)
        self._move("unload_deferred", out, f"server busy: {busy.describe()}")

    # --- helpers ------------------------------------------------------------

    def _move(self, trigger: Trigger, out: list[Action], cause: str) -> None:
        """Move the main resident through the phase table (phases.py) and announce it."""
        old = self._main.move(trigger)
        new = self._main.phase
        if new is old:
            return
        self._cause = (cause, self._now)
        out.append(
            Notify("state_changed", {"from": old.value, "to": new.value, "model": self._main.model})
        )
