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
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import select
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger()

COALESCE_S = 0.05
"""How long to keep gathering events after the first one before reporting a change."""

POLL_INTERVAL_S = 0.5

_Signature = tuple[int, int, int, int, int]


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


def _signature(path: Path) -> _Signature | None:
    """What identifies a version of the file; None when it does not exist (or can't be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _nearest_existing(target: Path) -> tuple[Path, str, bool]:
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


class PollingWatcher:
    """The fallback: compares the file's stat signature every `interval` seconds."""

    def __init__(self, path: Path, *, interval: float = POLL_INTERVAL_S) -> None:
        self._path = Path(path)
        self._interval = interval
        self._last = _signature(self._path)
        self._closed = False
        self._sleeper: asyncio.Future[None] | None = None

    async def wait_changed(self) -> None:
        while True:
            await self._sleep(self._interval)
            current = _signature(self._path)
            if current != self._last:
                break
        # Let a burst finish, then remember the state it ended in.
        await self._sleep(COALESCE_S)
        self._last = _signature(self._path)

    def close(self) -> None:
        self._closed = True
        if self._sleeper is not None:
            self._sleeper.cancel()

    async def _sleep(self, seconds: float) -> None:
        if self._closed:
            raise RuntimeError("the file watcher is closed")
        loop = asyncio.get_running_loop()
        self._sleeper = loop.create_future()
        handle = loop.call_later(seconds, _resolve, self._sleeper)
        try:
            await self._sleeper
        finally:
            handle.cancel()
            self._sleeper = None


class _FdWatcher:
    """Shared part of the kernel-notification watchers: wait on an fd, coalesce, degrade.

    Subclasses provide `_fd`, `_arm()` (set up watches, may raise OSError), `_consume()`
    (read every queued event without blocking; True when the file may have changed) and
    `_release()` (close their fds).
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._pending = False
        self._closed = False
        self._waiting = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fallback: PollingWatcher | None = None

    @property
    def _fd(self) -> int:
        raise NotImplementedError

    def _arm(self) -> None:
        raise NotImplementedError

    def _consume(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    async def wait_changed(self) -> None:
        if self._closed:
            raise RuntimeError("the file watcher is closed")
        if self._waiting:
            raise RuntimeError("another task is already waiting on this file watcher")
        self._waiting = True
        try:
            await self._wait_changed()
        finally:
            self._waiting = False

    async def _wait_changed(self) -> None:
        if self._fallback is not None:
            await self._fallback.wait_changed()
            return
        loop = asyncio.get_running_loop()
        # `_pending` survives cancellation: a change seen by a cancelled call is not lost.
        while not self._pending:
            await self._readable(loop)
            self._pending = self._consume()
        deadline = loop.time() + COALESCE_S
        while self._fallback is None and (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._readable(loop), remaining)
            except TimeoutError:
                break
            self._consume()
        self._pending = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._waiter.cancel()
        if self._fallback is not None:
            self._fallback.close()
        self._release()

    def _rearm(self) -> None:
        """Re-arm after the watched folders changed; on failure, fall back to polling."""
        try:
            self._arm()
        except OSError as e:
            log.warning("config_watch_fallback", path=str(self._path), error=str(e))
            self._fallback = PollingWatcher(self._path)

    async def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._fd, _resolve, waiter)
        self._waiter, self._loop = waiter, loop
        try:
            await waiter
        finally:
            self._waiter = None
            if not self._closed:
                loop.remove_reader(self._fd)


def _resolve(future: asyncio.Future[None]) -> None:
    # A level-triggered reader can fire again before the waiting task has run.
    if not future.done():
        future.set_result(None)


# --- Linux: inotify ------------------------------------------------------------------------

_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000

_WATCH_MASK = (
    _IN_CLOSE_WRITE
    | _IN_MOVED_TO
    | _IN_MOVED_FROM
    | _IN_CREATE
    | _IN_DELETE
    | _IN_ATTRIB
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
# The watched folder itself went away or the kernel dropped the watch: watch anew.
_WATCH_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED

_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of name


class _Libc:
    """The three inotify calls, through ctypes (the stdlib has no binding)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init1 = libc.inotify_init1
        self._init1.argtypes = [ctypes.c_int]
        self._init1.restype = ctypes.c_int
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add_watch.restype = ctypes.c_int
        self._rm_watch = libc.inotify_rm_watch
        self._rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm_watch.restype = ctypes.c_int

    def init(self) -> int:
        fd: int = self._init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _errno_error("inotify_init1")
        return fd

    def add_watch(self, fd: int, folder: Path, mask: int) -> int:
        wd: int = self._add_watch(fd, os.fsencode(folder), mask)
        if wd < 0:
            raise _errno_error(f"inotify_add_watch({folder})")
        return wd

    def rm_watch(self, fd: int, wd: int) -> None:
        # Fails harmlessly when the kernel already dropped the watch.
        self._rm_watch(fd, wd)


@functools.cache
def _get_libc() -> _Libc:
    return _Libc()


def _errno_error(call: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{call}: {os.strerror(errno)}")


def _inotify_events(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    offset = 0
    while offset + _EVENT_HEADER.size <= len(data):
        wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
        offset += _EVENT_HEADER.size
        yield wd, mask, data[offset : offset + length].rstrip(b"\0")
        offset += length


class InotifyWatcher(_FdWatcher):
    """Linux: inotify watches on the folders that hold the file (and its symlink target)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._libc = _get_libc()
        self._inotify_fd = self._libc.init()
        # wd -> {name in that folder -> True if it is the file, False if a folder on the way}
        self._watches: dict[int, dict[bytes, bool]] = {}
        self._last: _Signature | None = None
        try:
            self._arm()
        except BaseException:
            os.close(self._inotify_fd)
            raise

    @property
    def _fd(self) -> int:
        return self._inotify_fd

    def _targets(self) -> list[Path]:
        resolved = Path(os.path.realpath(self._path))
        return [self._path] if resolved == self._path else [self._path, resolved]

    def _arm(self) -> None:
        watches: dict[int, dict[bytes, bool]] = {}
        for target in self._targets():
            # A folder can vanish between the check and the watch; walk up and try again.
            for _attempt in range(8):
                folder, name, is_file = _nearest_existing(target)
                try:
                    wd = self._libc.add_watch(self._inotify_fd, folder, _WATCH_MASK)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                names = watches.setdefault(wd, {})
                names[os.fsencode(name)] = names.get(os.fsencode(name), False) or is_file
                break
            else:
                raise OSError(f"cannot watch the folders of {target}: they keep changing")
        # Adding before removing leaves no moment without a watch.
        for wd in self._watches.keys() - watches.keys():
            self._libc.rm_watch(self._inotify_fd, wd)
        self._watches = watches
        self._last = _signature(self._path)

    def _consume(self) -> bool:
        changed = False
        rearm = False
        while True:
            try:
                data = os.read(self._inotify_fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            for wd, mask, name in _inotify_events(data):
                if mask & _IN_Q_OVERFLOW:
                    changed = rearm = True
                    continue
                names = self._watches.get(wd)
                if names is None:
                    continue  # a watch we already replaced
                if mask & _WATCH_GONE:
                    rearm = True
                elif name in names:
                    if names[name]:
                        changed = True
                    else:
                        rearm = True  # a folder on the way to the file appeared or went
        if rearm or changed:
            # Also after a change of the file itself: a re-pointed symlink moves the target.
            before = self._last
            self._rearm()
            # Events are missed while moving the watch; the file's state tells what happened.
            changed = changed or self._last != before or self._fallback is not None
        return changed

    def _release(self) -> None:
        os.close(self._inotify_fd)


# --- macOS and the BSDs: kqueue ------------------------------------------------------------

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

    class KqueueWatcher(_FdWatcher):
        """kqueue vnode watches on the file's folder (entries) and on the file (writes).

        Every event re-opens both watches, since the file may have been replaced; a folder
        event counts only when the file's stat signature changed, a file event always counts.
        """

        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self._kq = select.kqueue()
            self._vnode_fds: list[int] = []
            self._file_fd: int | None = None
            self._last: _Signature | None = None
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
            folder, _name, is_file = _nearest_existing(self._path)
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
            self._last = _signature(self._path)

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
