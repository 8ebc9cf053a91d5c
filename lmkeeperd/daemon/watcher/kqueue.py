"""macOS and the BSDs: kqueue vnode watches on the config file's folder and on the file."""

from __future__ import annotations

import os
import select
import sys
from pathlib import Path

from lmkeeperd.daemon.watcher.common import Signature, nearest_existing, signature
from lmkeeperd.daemon.watcher.kernel import FdWatcher

# Linux's `select` has no kqueue names: the guard keeps this module importable (and
# mypy's Linux run quiet) there; the front imports KqueueWatcher only elsewhere.
if sys.platform != "linux":
    # O_EVTONLY (macOS) watches without keeping the volume busy; elsewhere read-only will do.
    # O_NONBLOCK: opening a FIFO put at the config path must not block the event loop.
    _KQ_OPEN_FLAGS = getattr(os, "O_EVTONLY", os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    _KQ_FOLDER_NOTES = select.KQ_NOTE_WRITE | select.KQ_NOTE_DELETE | select.KQ_NOTE_RENAME
    _KQ_FILE_NOTES = (
        select.KQ_NOTE_WRITE
        | select.KQ_NOTE_EXTEND
        | select.KQ_NOTE_ATTRIB
        | select.KQ_NOTE_DELETE
        | select.KQ_NOTE_RENAME
    )

    class KqueueWatcher(FdWatcher):
        """kqueue vnode watches on the file's folder (entries) and on the file (writes).

        Every event re-opens both watches, since the file may have been replaced; a folder
        event counts only when the file's stat signature changed, a file event always counts.
        """

        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self._kq = select.kqueue()
            self._vnode_fds: list[int] = []
            self._file_fd: int | None = None
            self._last: Signature | None = None
            try:
                self._arm()
            except BaseException:
                self._release()
                raise

        @property
        def _fd(self) -> int:
            return self._kq.fileno()

        def _arm(self) -> None:
            self._close_vnodes()
            folder, _name, is_file = nearest_existing(self._path)
            folder_fd = os.open(folder, _KQ_OPEN_FLAGS)
            self._vnode_fds.append(folder_fd)
            changes = [_vnode_event(folder_fd, _KQ_FOLDER_NOTES)]
            if is_file:
                try:
                    self._file_fd = os.open(self._path, _KQ_OPEN_FLAGS)
                except FileNotFoundError:
                    pass  # not created yet: the folder watch sees it appear
                else:
                    self._vnode_fds.append(self._file_fd)
                    changes.append(_vnode_event(self._file_fd, _KQ_FILE_NOTES))
            self._kq.control(changes, 0, 0)
            self._last = signature(self._path)

        def _consume(self) -> bool:
            events: list[select.kevent] = []
            while batch := self._kq.control(None, 64, 0):
                events.extend(batch)
                if len(batch) < 64:
                    break
            if not events:
                return False
            file_event = self._file_fd is not None and any(
                ev.ident == self._file_fd for ev in events
            )
            before = self._last
            self._rearm()
            return file_event or self._last != before or self._fallback is not None

        def _close_vnodes(self) -> None:
            # Closing a vnode fd also removes its kevents.
            for fd in self._vnode_fds:
                os.close(fd)
            self._vnode_fds = []
            self._file_fd = None

        def _release(self) -> None:
            self._close_vnodes()
            self._kq.close()

    def _vnode_event(fd: int, notes: int) -> select.kevent:
        return select.kevent(
            fd,
            filter=select.KQ_FILTER_VNODE,
            flags=select.KQ_EV_ADD | select.KQ_EV_CLEAR,
            fflags=notes,
        )
