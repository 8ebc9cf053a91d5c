"""The lifecycle core's rules about what LM Studio sees and holds (L17-L22).

The server's view (snapshots: a model that vanished, a restart after an
outage), LM Studio's own activity (busy instances, the activity channel,
forced switches) and strays lmkeeperd started (L22). `Lifecycle` (machine.py)
inherits these; the rules they call back into (switching, unloading, idle) are
declared below and written there.
"""

from __future__ import annotations

from typing import Any

from lmkeeperd.core.actions import Action, Notify
from lmkeeperd.core.events import ActivitySource, OwnStray, ServerActivity, ServerSnapshot
from lmkeeperd.core.phases import State, Trigger
from lmkeeperd.core.records import Busy
from lmkeeperd.core.view import LifecycleView


class ServerRules(LifecycleView):
    """L17-L22. The rest of the rules are machine.py's (`Lifecycle`)."""

    # --- written in machine.py ------------------------------------------------

    def _hands_on(self) -> bool:
        raise NotImplementedError

    def _begin_switch(self, target: str, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _supersede_load(self, out: list[Action]) -> None:
        raise NotImplementedError

    def _took(
        self, model: str, instance: str, adopted: bool, now: float, out: list[Action], cause: str
    ) -> None:
        raise NotImplementedError

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
        raise NotImplementedError

    def _unload_main(
        self,
        reason: str,
        now: float,
        out: list[Action],
        request: int | None = None,
        *,
        forced: bool = False,
    ) -> None:
        raise NotImplementedError

    def _release(self, now: float, start: float, out: list[Action], cause: str) -> None:
        raise NotImplementedError

    def _restart_idle(self, now: float) -> None:
        raise NotImplementedError

    def _move(self, trigger: Trigger, out: list[Action], cause: str) -> None:
        raise NotImplementedError

    def _adopt_resident(self, model: str, instance: str, now: float, out: list[Action]) -> bool:
        raise NotImplementedError  # residency.py

    # --- the server's view (L17, L18, L22) ----------------------------------

    def _snapshot(self, snap: ServerSnapshot, now: float, out: list[Action]) -> None:
        self._server = {k: tuple(v) for k, v in snap.loaded.items() if v}
        if snap.after_outage:
            self._ledger.landing.clear()  # a server restart forgets every load (L17, L30)
        listed = {i for v in self._server.values() for i in v}
        usage, main, intent = self._usage, self._main, self._intent
        usage.busy = {i: b for i, b in usage.busy.items() if i in listed}
        # An unload waiting for an instance no longer listed has nothing left to unload.
        self._ledger.deferred = [
            d for d in self._ledger.deferred if d.instance_id in listed or d.requests
        ]
        if main.draft is not None and main.draft[1] not in self._server.get(main.draft[0], ()):
            main.draft = None
        for model, other in list(self._others.items()):  # L18 for residents beside it
            if other.instance not in self._server.get(model, ()):
                del self._others[model]
                out.append(Notify("model_vanished", {"model": model}))
        vanished = (
            main.serving
            and main.model is not None
            and main.instance not in self._server.get(main.model, ())
        )
        if vanished:
            assert main.model is not None
            out.append(Notify("model_vanished", {"model": main.model}))
            lost = main.model
            self._supersede_load(out)  # a draft still loading goes with its main model
            main.forget()
            main.stop_idle()
            self._move("vanished", out, "model vanished")
            if not (snap.after_outage and intent.wanted == lost):
                intent.wanted = None  # unloaded by hand: follow the server, do not fight the user
            queued, intent.queued = intent.queued, None
            if queued is not None:
                self._begin_switch(queued, now, out)
                return
        if (
            snap.after_outage
            and main.phase is State.IDLE
            and intent.wanted is not None
            and intent.debounce_at is None
        ):
            self._begin_switch(intent.wanted, now, out)

    def _own_stray(self, event: OwnStray, now: float, out: list[Action]) -> None:
        """L22: an instance lmkeeperd started and no longer tracks: adopt it or unload it."""
        model, instance = event.model.strip(), event.instance_id
        self._ledger.landed(model)
        if instance in self.owned_instances():
            return  # tracked already, or already on its way out: idempotent
        intent, main = self._intent, self._main
        # What we want: a selection still in its debounce counts (after a restart the
        # restored selection may wait there while the journal reports its instance).
        want = intent.debounce_target if intent.debounce_at is not None else intent.wanted
        wanted = self._hands_on() and self._settings.auto_load and want == model
        no_instance = main.phase is State.IDLE or (
            main.phase is State.LOADING and main.model == model
        )
        if wanted and no_instance:
            self._supersede_load(out)  # its instance becomes a stray when it returns
            intent.cancel_debounce()
            intent.wanted = main.model = model
            out.append(Notify("stray_adopted", {"model": model, "instance_id": instance}))
            self._took(model, instance, False, now, out, "stray adopted")
            return
        # L22, L28 (residency.py): one of ours kept beside the current model; never one
        # that was on its way out (it may not even be ours: an unload command's).
        if not event.leaving and self._adopt_resident(model, instance, now, out):
            return
        out.append(Notify("stray_found", {"model": model, "instance_id": instance}))
        self._unload_background(model, instance, "stray", now, out)

    # --- what LM Studio sees (L19-L21) --------------------------------------

    def _server_activity(self, event: ServerActivity, now: float, out: list[Action]) -> None:
        instance = event.instance_id
        usage, main = self._usage, self._main
        ours = instance == main.instance and main.serving
        was_busy = instance in usage.busy
        if event.busy:
            old = usage.busy.get(instance)
            usage.busy[instance] = Busy(event.doing, event.queued, old.since if old else now)
            if ours and self._hands_on():
                main.idle_at = None
                if main.phase is State.LOADED:
                    self._move("in_use", out, f"server busy: {event.doing}")
            return
        usage.busy.pop(instance, None)
        used = None if event.last_used is None else min(event.last_used, now)
        last = main.last_use
        if was_busy:
            # L19: busy -> idle restarts the timer from the later of ours and LM Studio's.
            theirs = used if used is not None else now
            start = theirs if last is None else max(last, theirs)
            self._release(now, start, out, "server idle")
        elif (
            ours
            and main.phase is State.LOADED
            and used is not None
            and used > (last if last is not None else float("-inf"))
        ):
            self._restart_idle(used)  # L19: LM Studio's last use counts as activity

    def _activity_source(self, event: ActivitySource, now: float, out: list[Action]) -> None:
        usage = self._usage
        if event.available == usage.source:
            return
        usage.source = event.available
        fields: dict[str, Any] = {"source": self.activity_source, "reason": event.reason}
        out.append(Notify("activity_source_changed", fields))
        if event.available:
            usage.blind_warned = False
            return
        # Stale busy flags must never block forever: without the channel, nobody clears them.
        busy, usage.busy = usage.busy, {}
        usage.blind_warned = False
        self._warn_if_blind(out, event.reason)
        if busy:
            self._release(now, now, out, "activity source lost")

    def _warn_if_blind(self, out: list[Action], reason: str | None = None) -> None:
        """L21: one warning per blind spell, when idle eject could cut a hidden generation."""
        keep = self.keep_alive
        timeout = keep if keep is not None else self._settings.idle_timeout
        if self._usage.source is not False or self._usage.blind_warned or timeout <= 0:
            return
        self._usage.blind_warned = True
        advice = (
            "LM Studio's activity cannot be read: clients that talk to LM Studio directly "
            "are invisible, and idle eject may unload a model they use. Use LM Studio 0.3.27 "
            "or newer, check [server] api_token_env, or send clients through lmkeeperd's proxy"
        )
        out.append(Notify("activity_blind", {"reason": reason, "advice": advice}))

    def _track_busy_wait(self, now: float) -> None:
        """L20: when did a switch start waiting on server-only activity (no client stream)?"""
        if not self._waiting_on_server():
            self._intent.busy_wait_from = None
        elif self._intent.busy_wait_from is None:
            self._intent.busy_wait_from = now

    def _waiting_on_server(self) -> bool:
        return (
            self._intent.queued is not None
            and self._main.phase is State.STREAMING
            and not self._usage.streams
            and self._in_use()
        )

    def _force_switch(self, now: float, out: list[Action]) -> None:
        main, intent = self._main, self._intent
        assert main.instance is not None and intent.busy_wait_from is not None
        busy = self._usage.busy.pop(main.instance, None)
        fields = {
            "model": main.model,
            "instance_id": main.instance,
            "doing": busy.describe() if busy else "busy",
            "waited_s": round(now - intent.busy_wait_from, 3),
        }
        out.append(Notify("switch_forced", fields))
        intent.busy_wait_from = None
        intent.next, intent.queued = intent.queued, None
        self._unload_main("switch", now, out, forced=True)
