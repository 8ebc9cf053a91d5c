"""The phases of a resident model and the one table that moves between them.

In the style of h11's `_state.py`: every legal move is a row of `TRANSITIONS`,
looked up in one place (`next_phase`); a move the table does not hold raises
`LifecycleError` and changes nothing. machine.py names the trigger, never the
phase it lands in, so a rule cannot put a resident where the table forbids.

    idle ──load──▶ loading ──landed──▶ loaded ──in_use──▶ streaming
      ▲              │ load_failed,      ▲  ◀────free─────   │
      │              │ dropped           │                   │ landed_in_use
      │◀─────────────┘                   │ unload            │ unload (forced)
      │◀──unloaded── unloading ◀─────────┴───────────────────┘
                        │ unload_deferred ─▶ streaming
    vanished (loaded, streaming ─▶ idle), parked (the same, the model staying loaded
    beside the next current one, L24) and hands_off (any ─▶ idle, L13).
"""

from __future__ import annotations

import enum
from typing import Literal

from lmkeeperd.errors import LifecycleError


class State(enum.Enum):
    IDLE = "idle"  # nothing of ours is loaded or loading
    LOADING = "loading"  # a load of `model` is in flight
    LOADED = "loaded"  # `model` is loaded and not in use; the idle timer may run
    STREAMING = "streaming"  # `model` is loaded and in use: a client stream, or busy (L19)
    UNLOADING = "unloading"  # `model` is being unloaded (switch, idle, command, exit)


Phase = State  # a resident's phase; `State` is the name status and the daemon know

Trigger = Literal[
    "load",  # a load starts, or a load in flight is waited for again
    "landed",  # the load finished (or an instance was adopted), not in use
    "landed_in_use",  # the same, in use at once (a stream, or LM Studio busy: L19)
    "in_use",  # a stream started or LM Studio reports it busy (L7, L19)
    "free",  # the last use ended (L9)
    "unload",  # an unload starts (switch, idle, pressure, command, exit, forced)
    "unloaded",  # the unload finished or failed: no longer ours either way (L4, L11)
    "unload_deferred",  # the driver looked and found it busy (L20)
    "load_failed",  # L6
    "dropped",  # a load given up by a command or at exit
    "vanished",  # gone from the server behind our back (L17, L18)
    "hands_off",  # another engine (L13)
    "parked",  # the model stays loaded beside the next current one (L24)
]

TRANSITIONS: dict[State, dict[str, State]] = {
    State.IDLE: {
        "load": State.LOADING,
        "landed": State.LOADED,  # a stray of ours adopted (L22)
        "landed_in_use": State.STREAMING,
    },
    State.LOADING: {
        "load": State.LOADING,
        "landed": State.LOADED,
        "landed_in_use": State.STREAMING,
        "load_failed": State.IDLE,
        "dropped": State.IDLE,
    },
    State.LOADED: {
        "in_use": State.STREAMING,
        "unload": State.UNLOADING,
        "vanished": State.IDLE,
        "parked": State.IDLE,
    },
    State.STREAMING: {
        "free": State.LOADED,
        "unload": State.UNLOADING,  # only a forced switch (L20)
        "vanished": State.IDLE,
        "parked": State.IDLE,
    },
    State.UNLOADING: {
        "unloaded": State.IDLE,
        "unload_deferred": State.STREAMING,
    },
}
for _row in TRANSITIONS.values():
    _row["hands_off"] = State.IDLE


def next_phase(phase: State, trigger: Trigger) -> State:
    """The phase `trigger` moves a resident in `phase` to; raises if the table has no row."""
    try:
        return TRANSITIONS[phase][trigger]
    except KeyError:
        raise LifecycleError(f"{trigger!r} is not allowed in phase {phase.value}") from None
