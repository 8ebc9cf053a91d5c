"""The lifecycle core's rules for the unload command (L7, L18, L19).

`lmkeeperd unload [MODEL]`: our own model (or the one named) is unloaded, never
under a client stream (L7) or while LM Studio is busy with it (L19); a command
that names another model unloads it whoever loaded it (L18). `Lifecycle`
(machine.py) inherits these.
"""

from __future__ import annotations

from lmkeeperd.core.actions import Action, CommandDone
from lmkeeperd.core.events import UnloadCommand
from lmkeeperd.core.ledger import Request
from lmkeeperd.core.phases import State
from lmkeeperd.core.records import plural
from lmkeeperd.core.server_rules import ServerRules


class CommandRules(ServerRules):
    """The unload command. The rest of the rules are machine.py's (`Lifecycle`)."""

    def _unload_command(self, cmd: UnloadCommand, now: float, out: list[Action]) -> None:
        target = cmd.model.strip() if cmd.model else None
        streams = self._usage.streams
        if streams:
            out.append(
                CommandDone(
                    cmd.request,
                    f"{plural(len(streams), 'stream')} open: lmkeeperd never unloads "
                    "under a stream; try again when they end",
                )
            )
            return
        main = self._main
        ours = target is None or (target == main.model and self._hands_on())
        if ours and main.model is not None:
            if main.phase is State.STREAMING:  # LM Studio says it is busy (L19)
                out.append(CommandDone(cmd.request, self._busy_error(main.model)))
                return
            self._intent.drop_pending()
            self._intent.wanted = None
            if main.phase is State.LOADED:
                self._unload_main("command", now, out, cmd.request)
            elif main.phase is State.LOADING:
                self._supersede_load(out)  # the stray is unloaded when its load returns
                main.model = None
                self._move("dropped", out, "unloaded by command")
                out.append(CommandDone(cmd.request))
            elif main.phase is State.UNLOADING and main.op is not None:
                self._ledger.wait_on(cmd.request, main.op)
            else:  # unreachable while the state invariants hold; answer anyway
                out.append(CommandDone(cmd.request, f"cannot unload in state {main.phase.value}"))
            return
        if target is None:
            out.append(CommandDone(cmd.request, "nothing is loaded by lmkeeperd"))
            return
        self._unload_named(target, cmd.request, now, out)

    def _unload_named(self, target: str, request: int, now: float, out: list[Action]) -> None:
        """L18: a command that names a model unloads it, whoever loaded it."""
        instances = list(self._server.get(target, ()))
        other = self._others.get(target)  # a resident beside the current one (L24)
        if other is not None and other.instance and other.instance not in instances:
            instances.append(other.instance)
        draft = self._main.draft
        if draft is not None and draft[0] == target:
            if draft[1] not in instances:
                instances.append(draft[1])
            self._main.draft = None
        if not instances:
            out.append(CommandDone(request, f"model {target!r} is not loaded on the server"))
            return
        busy = self._usage.busy
        free = [i for i in instances if i not in busy]
        if not free:
            out.append(CommandDone(request, self._busy_error(target, instances[0])))
            return
        self._ledger.requests[request] = Request(set())
        if len(free) < len(instances):
            taken = next(i for i in instances if i in busy)
            self._ledger.requests[request].errors.append(self._busy_error(target, taken))
        going = {o.instance_id: i for i, o in self._ledger.ops.items() if o.kind == "unload"}
        for instance in free:
            if instance in going:  # one unload per instance: a second command waits for it
                self._ledger.wait_on(request, going[instance])
            else:
                self._unload_background(target, instance, "command", now, out, [request])
        if other is not None and other.instance in free:
            # Gone from the residents; back among them should the driver find it busy (L20).
            del self._others[target]
            for op in self._ledger.ops.values():
                if op.kind == "unload" and op.instance_id == other.instance:
                    op.resident = other

    def _busy_error(self, model: str, instance: str | None = None) -> str:
        doing = self._usage.describe(instance or self._main.instance) or "busy"
        return (
            f"{model} is in use on the server ({doing}): lmkeeperd never unloads a model "
            "in use; try again when it is idle"
        )
