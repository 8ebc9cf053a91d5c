"""The loads and unloads under way, shared by the operations and the server view.

operations.py starts them and counts their outcomes; server_view.py reads the
count (a listing older than an outcome is stale) and the models being loaded
(their instances are not strays yet, L22).
"""

from __future__ import annotations

import asyncio


class InFlight:
    def __init__(self) -> None:
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.loading: dict[int, str] = {}  # load op -> model, while its task runs
        self.outcomes = 0  # load/unload outcomes so far: a listing older than one is stale

    @property
    def any(self) -> bool:
        """A load or unload request has not returned yet."""
        return bool(self.tasks)
