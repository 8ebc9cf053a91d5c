"""The pure lifecycle core: events in, actions out (see machine.py)."""

from __future__ import annotations

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
from lmkeeperd.core.machine import LMSTUDIO, Lifecycle, LifecycleError, State

__all__ = [
    "LMSTUDIO",
    "Action",
    "Activity",
    "CancelLoad",
    "CommandDone",
    "EngineChanged",
    "Event",
    "Lifecycle",
    "LifecycleError",
    "LoadFailed",
    "LoadFinished",
    "MemoryPressure",
    "Notify",
    "ResumeLoad",
    "Select",
    "ServerSnapshot",
    "Settings",
    "SettingsChanged",
    "Shutdown",
    "StartLoad",
    "StartUnload",
    "State",
    "StreamEnded",
    "StreamStarted",
    "Tick",
    "UnloadCommand",
    "UnloadFailed",
    "UnloadFinished",
]
