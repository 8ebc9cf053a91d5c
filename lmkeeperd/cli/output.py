"""What every CLI handler shares: the exit codes and the error and warning lines.

A leaf: the handler modules (commands.py, waiting.py, listing.py, ...) import
it and it imports none of them. Standard library only.

Exit codes (interface.md): 0 success, 1 the daemon or server refused the
request, 2 bad usage or bad config, 3 no daemon running.
"""

from __future__ import annotations

import sys

from lmkeeperd.cli.table import ERROR_PREFIX, PROG

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

OK, REFUSED, BAD_USAGE, NO_DAEMON = 0, 1, 2, 3
WARNING_PREFIX = f"{PROG}: warning: "


def error(message: str) -> None:
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr)


def warning(message: str) -> None:
    """A warning on stderr: the command still did what was asked (exit 0)."""
    print(f"{WARNING_PREFIX}{message}", file=sys.stderr)


def refusal(reply: dict[str, Any]) -> str:
    """The daemon's refusal, with the next step where the CLI knows one."""
    message = str(reply.get("error", reply))
    if "nearest" in reply:  # L23: an unknown model key
        message += "; `lmkeeperd models` lists every key the server has"
    return message


def memory_warning(reply: dict[str, Any]) -> None:
    """L12 at selection: the select reply's memory verdict, when the model may not fit."""
    memory = reply.get("memory")
    if isinstance(memory, dict) and memory.get("verdict") == "may not fit":
        warning(str(memory.get("message") or "the model may not fit in memory"))
