"""What a stop leaves on the server, said at the stop (L16, L22).

A stop does not wait past `shutdown_timeout`. A load still running then may
finish on the server after the daemon is gone (LM Studio does not abandon a load
whose client left), and an unload still running may fail: either way an
instance lmkeeperd started stays loaded, owned by nobody until lmkeeperd starts
again. The journal (journal.py) keeps every such operation, so the next start
collects the instance (L22). This module says so in the log, one warning per
operation, naming the model, what happens next and how to act now:

- `shutdown_unload_timed_out`: the stop waited its whole bound for the server;
- `shutdown_left_in_flight`: it did not wait (`unload_on_exit = false`), but a
  load or unload was still on its way.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from lmkeeperd.daemon.journal import Entry

log = structlog.get_logger()


def report(entries: Mapping[str, Entry], *, timeout_s: float, timed_out: bool) -> None:
    """One warning per load or unload the stop leaves in flight (see the module docstring)."""
    event = "shutdown_unload_timed_out" if timed_out else "shutdown_left_in_flight"
    pending = [e for e in entries.values() if e.kind in ("load", "unload")]
    if timed_out and not pending:
        log.warning(event, timeout_s=timeout_s, message=_waited(timeout_s))
    for entry in pending:
        log.warning(
            event,
            timeout_s=timeout_s,
            op=entry.kind,
            model=entry.model,
            instance_id=entry.instance_id,
            message=message(entry, timeout_s if timed_out else None),
        )


def message(entry: Entry, waited_s: float | None) -> str:
    """One sentence: what is left behind, what the next start does, what to run now."""
    waited = f" within the {waited_s:g} s stop bound" if waited_s is not None else ""
    if entry.kind == "load":
        what = (
            f"{entry.model} was still loading when lmkeeperd stopped{waited}; LM Studio may "
            "finish the load"
        )
        by_hand = f"`lms unload {entry.model}`"
    else:
        instance = entry.instance_id or entry.model
        what = f"the unload of {instance} ({entry.model}) did not finish{waited}"
        by_hand = f"`lms unload {instance}`"
    return (
        f"{what}. lmkeeperd unloads it at its next start (the journal keeps it); "
        f"to unload it now, run {by_hand}."
    )


def _waited(timeout_s: float) -> str:
    return f"the server did not answer within the {timeout_s:g} s stop bound"
