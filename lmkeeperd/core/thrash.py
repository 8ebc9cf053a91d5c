"""Thrash watch: switches that keep alternating between the same models (L24-L26).

Pure and small: residency.py tells it each switch that loaded a model, and it
answers with the fields of a `thrashing` warning at most once per window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 600.0  # 10 minutes
SWITCHES = 6  # more than this many switches in the window is thrashing
MODELS = 3  # ... when they alternate between at most this many models


@dataclass(slots=True)
class ThrashWatch:
    switches: deque[tuple[float, str]] = field(default_factory=deque)
    warned_at: float | None = None

    def switched(self, model: str, now: float, max_loaded: int) -> dict[str, Any] | None:
        """A switch loaded `model` at `now`: the warning's fields when it is thrashing."""
        self.switches.append((now, model))
        while self.switches and self.switches[0][0] <= now - WINDOW_S:
            self.switches.popleft()
        models = sorted({m for _, m in self.switches})
        if len(self.switches) <= SWITCHES or not 1 < len(models) <= MODELS:
            return None
        if self.warned_at is not None and now - self.warned_at < WINDOW_S:
            return None
        self.warned_at = now
        keep = "both" if len(models) == 2 else "them all"
        hint = (
            f"switches keep alternating between {', '.join(models)}: each one unloads and "
            f"loads again; max_loaded = {max(len(models), max_loaded + 1)} or a larger "
            f"memory budget would keep {keep} loaded"
        )
        return {
            "models": models,
            "switches": len(self.switches),
            "window_s": WINDOW_S,
            "hint": hint,
        }
