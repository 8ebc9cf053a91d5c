"""Linux: inotify, through ctypes, on the folders that hold the config file.

The watch is on the file's *folder*, filtered by name: editors save by writing a temporary
file and renaming it over the original, and a watch on the file itself would follow the old,
replaced inode and miss every later change.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from lmkeeperd.daemon.watcher.common import Signature, nearest_existing, signature
from lmkeeperd.daemon.watcher.kernel import FdWatcher

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


class InotifyWatcher(FdWatcher):
    """Linux: inotify watches on the folders that hold the file (and its symlink target)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._libc = _get_libc()
        self._inotify_fd = self._libc.init()
        # wd -> {name in that folder -> True if it is the file, False if a folder on the way}
        self._watches: dict[int, dict[bytes, bool]] = {}
        self._last: Signature | None = None
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
                folder, name, is_file = nearest_existing(target)
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
        self._last = signature(self._path)

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
