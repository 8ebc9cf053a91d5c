"""What the lifecycle core asks the driver to do.

The driver performs each action and reports its outcome back as an event
carrying the same `op` id (LoadFinished/LoadFailed, UnloadFinished/UnloadFailed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StartLoad:
    """Make sure `model` is loaded: adopt an existing instance, else load it (L14, L17).

    The memory advisory (L12) is the driver's to check right before loading.
    `avoid` lists instances of this model that the core is unloading: the
    driver must not adopt those, since they are about to disappear.
    """

    op: int
    model: str
    load_config: Mapping[str, Any] = field(default_factory=dict)
    draft: bool = False
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CancelLoad:
    """Stop waiting for load `op` (L5).

    The driver keeps listening for the load's outcome in the background and
    still reports it: if the server finished the load anyway, the core
    answers with a StartUnload of that stray instance.
    """

    op: int


@dataclass(frozen=True, slots=True)
class ResumeLoad:
    """Wait for load `op` again: the core had cancelled it, and wants that model after all.

    Nothing to do for a driver that kept the request running (see CancelLoad): its
    outcome now counts as the main load's.
    """

    op: int


@dataclass(frozen=True, slots=True)
class StartUnload:
    """Unload one instance.

    `look_first` (L20): the model may be in use, so when LM Studio's activity can be
    read the driver re-reads the instance's processing state right before sending,
    and if it is busy sends nothing and reports UnloadDeferred instead. False for
    strays, exit and forced switches.
    """

    op: int
    model: str
    instance_id: str
    reason: str  # switch | idle | command | exit | superseded | stray | memory_pressure
    look_first: bool = False


@dataclass(frozen=True, slots=True)
class Notify:
    """An event for the log and for subscribed clients (names as in interface.md)."""

    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandDone:
    """The answer to an UnloadCommand: `error` is None on success."""

    request: int
    error: str | None = None


Action = StartLoad | CancelLoad | ResumeLoad | StartUnload | Notify | CommandDone
