"""The parts of `status` that say why: the core's explanation, the config's problem.

`explain_status` turns the core's `Explanation` (monotonic times) into the
`why` object of the status (ages, wall-clock times); `ConfigProblem` keeps the
live config file's current problem for `config_error` until a good version is
read (then the driver logs `config_fixed`).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from lmkeeperd.core import CoreView
from lmkeeperd.errors import ConfigError
from lmkeeperd.status_types import ConfigErrorStatus, InFlightStatus, WhyStatus

_LINE_RE = re.compile(r"\bline (\d+)")


def utc_iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def explain_status(core: CoreView, now: float) -> WhyStatus:
    """`now` is a reading of the core's clock; wall times are derived from it."""
    why = core.explain(now)
    wall_now = time.time()
    in_flight: InFlightStatus | None = None
    if why.in_flight is not None:
        in_flight = {
            "op": why.in_flight,
            "model": why.model,
            "elapsed_s": round(why.in_flight_s or 0.0, 1),
        }
    return {
        "cause": why.cause,
        "cause_at": None if why.cause_at is None else utc_iso(wall_now - (now - why.cause_at)),
        "cause_ago_s": None if why.cause_at is None else round(now - why.cause_at, 1),
        "waiting_for": why.waiting_for,
        "waiting_in_s": (
            None if why.waiting_until is None else round(max(0.0, why.waiting_until - now), 1)
        ),
        "in_flight": in_flight,
        "server_busy": why.server_busy,
        "activity_source": why.activity_source,
        "deferred_unloads": why.deferred_unloads,
    }


class ConfigProblem:
    """The live config file's problem, kept until a good version is read."""

    def __init__(self) -> None:
        self.current: ConfigErrorStatus | None = None

    def failed(self, path: str, error: ConfigError) -> None:
        problems = error.problems or [str(error)]
        found = _LINE_RE.search(problems[0])
        since = self.current["since"] if self.current else utc_iso(time.time())
        self.current = {
            "file": path,
            "line": int(found.group(1)) if found else None,
            "message": problems[0],
            "problems": list(problems),
            "since": since,
        }

    def fixed(self) -> ConfigErrorStatus | None:
        """Forget the problem; the one there was, if any (to log `config_fixed`)."""
        was, self.current = self.current, None
        return was
