"""What every config file watcher shares: the file's signature, where to watch, timing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

COALESCE_S = 0.05
"""How long to keep gathering events after the first one before reporting a change."""

POLL_INTERVAL_S = 0.5

Signature = tuple[int, int, int, int, int]


def signature(path: Path) -> Signature | None:
    """What identifies a version of the file; None when it does not exist (or can't be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def nearest_existing(target: Path) -> tuple[Path, str, bool]:
    """The folder to watch for `target`: (folder, name to look for in it, is it the file?).

    That is `target`'s own folder when it exists, else the nearest existing ancestor, in which
    the next component towards `target` will appear.
    """
    child = target
    folder = target.parent
    while not os.path.isdir(folder) and folder != folder.parent:
        child = folder
        folder = folder.parent
    return folder, child.name, child == target


def resolve(future: asyncio.Future[None]) -> None:
    # A level-triggered reader can fire again before the waiting task has run.
    if not future.done():
        future.set_result(None)
