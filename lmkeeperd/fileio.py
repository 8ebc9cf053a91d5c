"""Reading and writing the daemon's small files without ever blocking or bloating.

The config file, the stored selection and the journal live where users (and other
programs) can put anything: a FIFO, a device, a directory, a 1 GiB file. Opening a
FIFO for reading blocks until a writer appears, and reading a huge file inflates the
daemon, so every read here opens without blocking, refuses anything that is not a
regular file, and reads at most a cap. Writes are atomic (temporary file, fsync,
rename, fsync of the folder), so a crash leaves either the old or the new file.
A write that must not wait for the disk (`sync=False`) is in place at once, for any
later reader even after the daemon is killed, and reaches the disk with `sync_file`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from lmkeeperd.errors import UnsafeFileError

# Caps for what lmkeeperd reads: generous for a hand-written file, far from harmful.
CONFIG_CAP = 1024 * 1024
STATE_CAP = 64 * 1024


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_small_file(path: Path, cap: int, *, what: str = "file") -> bytes:
    """The bytes of regular file `path`, at most `cap` of them.

    Raises FileNotFoundError when it does not exist, UnsafeFileError when it is not a
    regular file or is larger than `cap`, and OSError for the rest (permissions...).
    Never blocks: a FIFO is opened with O_NONBLOCK, seen for what it is, and closed.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _kind(info.st_mode)
            raise UnsafeFileError(f"{what} {path} is {kind}; it must be a regular file")
        if info.st_size > cap:
            raise UnsafeFileError(
                f"{what} {path} is {info.st_size} bytes; lmkeeperd reads at most {cap}"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            chunk = os.read(fd, min(65536, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:  # it grew while we read it
            raise UnsafeFileError(f"{what} {path} is larger than the {cap} bytes lmkeeperd reads")
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one.

    The folder is created (0700) when missing. Raises OSError; the temporary file never
    outlives a failure. `sync=False`: no fsync here (the caller runs `sync_file` later);
    the new file is in place for every reader, and survives the daemon's crash, but not
    yet a power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        _sync_folder(path)


def sync_file(path: Path) -> None:
    """Put what `write_atomically(..., sync=False)` wrote on disk: the file, then its entry.

    Whatever file is at `path` now is synced (a newer write included). Raises OSError.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)
    finally:
        os.close(fd)
    _sync_folder(path)


def _sync_folder(path: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
