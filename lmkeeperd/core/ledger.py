"""The ledger of the core's own operations (no rules here).

Loads and unloads in flight (`Op`, keyed by the op id every outcome event
carries back), unload commands waiting for their unloads (`Request`) and
unloads waiting for an instance to be free (`Deferred`). machine.py decides;
the ledger only records and answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmkeeperd.core.actions import CommandDone
from lmkeeperd.core.records import Resident

# Unload reasons whose model may be in use: the driver looks before it unloads (L20).
LOOK_FIRST_REASONS = frozenset({"switch", "idle", "memory_pressure", "command"})

# Why the core unloaded, in words for status ("why").
UNLOAD_CAUSES = {
    "switch": "switch",
    "idle": "idle eject",
    "memory_pressure": "memory pressure",
    "command": "unloaded by command",
    "exit": "exit",
}


@dataclass(slots=True)
class Op:
    kind: str  # "load" | "unload"
    model: str
    started: float
    draft: bool = False
    superseded: bool = False  # a load nobody waits for any more (L5)
    abandoned: bool = False  # the driver gave up on this load; it may still land (L22, L30)
    pinned: bool = False  # a pinned model loaded beside the current one (L28)
    config: dict[str, Any] = field(default_factory=dict)  # what a load asked for (L14)
    instance_id: str = ""
    reason: str = ""
    requests: list[int] = field(default_factory=list)
    resident: Resident | None = None  # a resident beside the current one, unloaded by name


@dataclass(slots=True)
class Request:
    """An unload command waiting for its unloads to finish."""

    ops: set[int]
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Deferred:
    """A background unload waiting for client streams to end or the instance to be idle."""

    model: str
    instance_id: str
    reason: str
    requests: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Ledger:
    """Every op in flight, the commands waiting on them and the deferred unloads."""

    ops: dict[int, Op] = field(default_factory=dict)
    requests: dict[int, Request] = field(default_factory=dict)
    deferred: list[Deferred] = field(default_factory=list)
    landing: list[Op] = field(default_factory=list)  # abandoned loads that may land (L30)
    last_op: int = 0

    def add(self, op: Op) -> int:
        self.last_op += 1
        self.ops[self.last_op] = op
        return self.last_op

    def load_in_flight(self) -> Op | None:
        """The load LM Studio is running for us, superseded or not (L30: at most one)."""
        return next((op for op in self.ops.values() if op.kind == "load"), None)

    def landed(self, model: str) -> None:
        """An abandoned load of `model` turned up on the server (L22): it lands no more."""
        for op in self.landing:
            if op.model == model:
                self.landing.remove(op)
                return

    def unloads(self) -> int:
        return sum(1 for op in self.ops.values() if op.kind == "unload")

    def loads(self) -> int:
        """Loads whose outcome still matters (superseded ones excluded)."""
        return sum(1 for op in self.ops.values() if op.kind == "load" and not op.superseded)

    def unloading(self, model: str) -> tuple[str, ...]:
        """Instances of `model` on their way out: a load must not adopt them (L17).

        A stray of `model` waiting for streams to end is not among them: wanted again,
        it is adopted and kept rather than joined by a second instance.
        """
        ops = self.ops.values()
        return tuple(
            [o.instance_id for o in ops if o.kind == "unload" and o.model == model]
            + [
                d.instance_id
                for d in self.deferred
                if d.model == model and d.reason not in ("superseded", "stray")
            ]
        )

    def leaving(self, main_op: int | None) -> list[str]:
        """The models of instances on their way out, one per instance: unloads waiting for
        streams to end or the instance to be idle, then unloads in flight beside the main
        resident's own (`main_op`). They hold their memory until gone (L7, L20, L25)."""
        going = [d.model for d in self.deferred]
        return going + [o.model for i, o in self.ops.items() if o.kind == "unload" and i != main_op]

    def owned(self) -> dict[str, str]:
        """Instances being unloaded or waiting to be: instance id -> model (L22)."""
        owned = {d.instance_id: d.model for d in self.deferred}
        owned.update({o.instance_id: o.model for o in self.ops.values() if o.kind == "unload"})
        return owned

    def keep(self, instance: str) -> None:
        """An instance taken back as ours: its deferred unload is dropped."""
        self.deferred = [d for d in self.deferred if d.instance_id != instance]

    def wait_on(self, request: int, op_id: int) -> None:
        """Unload command `request` is answered when op `op_id` is done too."""
        self.ops[op_id].requests.append(request)
        self.requests.setdefault(request, Request(set())).ops.add(op_id)

    def answer(self, op_id: int, op: Op, error: str | None) -> list[CommandDone]:
        """Answer the unload commands that waited for this op, once all their ops are done."""
        done: list[CommandDone] = []
        for request in op.requests:
            pending = self.requests.get(request)
            if pending is None:
                continue
            pending.ops.discard(op_id)
            if error is not None:
                pending.errors.append(
                    error if error.startswith(op.model) else f"{op.model}: {error}"
                )
            if not pending.ops:
                del self.requests[request]
                done.append(CommandDone(request, "; ".join(pending.errors) or None))
        return done
