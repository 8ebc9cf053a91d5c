"""Watch the config file, so an edit applies within a second, without a busy poll.

`watch_file(path)` picks the best `FileWatcher` for the platform:

* Linux: inotify (through ctypes) on the file's *folder*, filtered by name. Editors save by
  writing a temporary file and renaming it over the original; a watch on the file itself
  would follow the old, replaced inode and miss every later change.
* macOS and the BSDs: kqueue on the folder (entries added, removed, renamed) and on the file
  (written in place), with a stat comparison to tell whether the folder event was ours.
* Anything else, or when the above fails (e.g. the inotify limits are exhausted): `os.stat`
  every 0.5 s. Half a second keeps the one-second promise of interface.md.

A folder that does not exist yet (no config written so far) is handled by watching the nearest
existing ancestor for the next path component and moving the watch down as folders appear; a
missing file is just a file that will be created. When the config path is a symlink (dotfile
managers), inotify also watches the folder of the file it points to.

`wait_changed()` returns when the file *may* have changed: the reader compares content. After
the first event it waits `COALESCE_S` for more, so an editor's write+rename burst gives one
reload. The kernel queues events that happen between two calls, so none is lost while the
caller is busy reloading. Only one task may wait at a time; `close()` ends a pending wait with
`CancelledError`. Use a watcher from its event loop's thread only.

Modules: `common.py` (the file's signature, the nearest existing folder, the timings),
`polling.py` (the stat poll), `kernel.py` (what inotify and kqueue share: waiting on an fd,
coalescing, falling back to the poll), `inotify.py`, `kqueue.py`; this front picks one.
"""

from __future__ import annotations

import os
import select
import sys
from pathlib import Path
from typing import Protocol

import structlog

from lmkeeperd.daemon.watcher.inotify import InotifyWatcher
from lmkeeperd.daemon.watcher.polling import PollingWatcher

if sys.platform != "linux":
    from lmkeeperd.daemon.watcher.kqueue import KqueueWatcher

__all__ = ["FileWatcher", "InotifyWatcher", "PollingWatcher", "watch_file"]

log = structlog.get_logger()


class FileWatcher(Protocol):
    async def wait_changed(self) -> None:
        """Return when the file may have changed (created, written, replaced, deleted)."""
        ...

    def close(self) -> None:
        """Release the watcher's file descriptors; idempotent."""
        ...


def watch_file(path: Path) -> FileWatcher:
    """The best available watcher for `path` on this platform (see the module docstring)."""
    path = Path(os.path.abspath(path))
    try:
        if sys.platform.startswith("linux"):
            return InotifyWatcher(path)
        if sys.platform != "linux" and hasattr(select, "kqueue"):
            return KqueueWatcher(path)
    except (OSError, AttributeError) as e:
        # AttributeError: a libc without inotify symbols.
        log.warning("config_watch_fallback", path=str(path), error=str(e))
    return PollingWatcher(path)
