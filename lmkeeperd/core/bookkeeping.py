"""Records the lifecycle core keeps about its actions and the server (no rules here).

The rules live in machine.py; these are the plain records it consults: loads and
unloads in flight (`Op`), unload commands waiting for their unloads (`Request`),
unloads waiting for an instance to be free (`Deferred`) and LM Studio's view of a
busy instance (`Busy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Unload reasons whose model may be in use: the driver looks before it unloads (L20).
LOOK_FIRST_REASONS = frozenset({"switch", "idle", "memory_pressure", "command"})

# Why the core unloaded, in words for status ("why", issue 13).
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
    config: dict[str, Any] = field(default_factory=dict)  # what a load asked for (L14)
    instance_id: str = ""
    reason: str = ""
    requests: list[int] = field(default_factory=list)


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


@dataclass(frozen=True, slots=True)
class Busy:
    """LM Studio reports this instance busy (L19) since `since`."""

    doing: str
    queued: int
    since: float

    def describe(self) -> str:
        """What it is doing, for events and errors: "generating", "idle, 2 queued"."""
        if self.queued > 0:
            return f"{self.doing}, {self.queued} queued"
        return self.doing


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
