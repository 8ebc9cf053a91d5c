"""Whether to colour what goes to a stream: the one rule for logs, status and events.

The informal standards every neighbouring tool follows: `NO_COLOR` (no-color.org)
set and non-empty turns colour off; `FORCE_COLOR` set and non-empty (other than
"0") turns it on even into a pipe, which `NO_COLOR` still beats; otherwise colour
only on a terminal that is not `TERM=dumb`. Standard library only: the CLI's
`status` imports it on every call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def use_color(stream: Any, environ: Mapping[str, str] | None = None) -> bool:
    """True when text written to `stream` should carry ANSI colours."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", ""):
        return False
    if env.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    if env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed stream
        return False
