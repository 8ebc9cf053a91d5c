"""Where a running daemon's control socket is, written down for the CLI.

The CLI finds the socket through the config file (`[control] socket`), but a
config file can stop telling: emptied, made unparsable before its `[control]`
table, replaced by a folder or a FIFO, or deleted, all while the daemon keeps
running on its last good config (and says so in `status`). So the daemon leaves
a record beside its socket's default place:

    <runtime folder>/socket-<key>.json   {"socket": ..., "pid": ..., "config": ...}

keyed like its state files by the config file it runs (`key`: the first 12 hex
digits of the SHA-256 of the resolved path, as `paths.state_key`), written with
mode 0600 once the socket listens, and removed when the daemon stops (only while
it is still this daemon's: a newer daemon of the same config may have replaced
it). The CLI reads it when the config cannot tell (cli/locate.py); a record whose
pid is gone is ignored (the daemon was killed before it could remove it).

Standard library only and no pathlib: the CLI imports this on the path of
`lmkeeperd status` when the config names no socket.
"""

from __future__ import annotations

import json
import os

PREFIX = "socket-"
SUFFIX = ".json"
MAX_RECORD_BYTES = 64 * 1024  # a path, a pid and a path: anything bigger is not ours


def config_key(config_path: str) -> str:
    """`paths.state_key` without pathlib: 12 hex of SHA-256 of the resolved config path."""
    resolved = os.path.realpath(os.path.expanduser(os.fspath(config_path)))
    return _sha256_hex(resolved.encode("utf-8", "surrogateescape"))[:12]


def _sha256_hex(data: bytes) -> str:
    # CPython's own SHA-256 module (`_sha2` from 3.12, `_sha256` before) loads in 0.2 ms;
    # hashlib loads OpenSSL first (2 ms). Same digest either way.
    for name in ("_sha2", "_sha256"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        return str(module.sha256(data).hexdigest())
    import hashlib  # pragma: no cover - a Python built without either

    return hashlib.sha256(data).hexdigest()  # pragma: no cover


def record_file(runtime_dir: str, config_path: str) -> str:
    """The record of the daemon that runs `config_path`, in `runtime_dir`."""
    return os.path.join(runtime_dir, f"{PREFIX}{config_key(config_path)}{SUFFIX}")


def write(path: str, *, socket: str, config: str, pid: int | None = None) -> None:
    """Write the record atomically with mode 0600; its folder is made 0700 if missing.

    Raises OSError when the folder cannot be made or written.
    """
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    body = json.dumps(
        {"socket": socket, "pid": os.getpid() if pid is None else pid, "config": config}
    )
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask said
        os.write(fd, body.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


def read(path: str) -> dict[str, object] | None:
    """The record at `path` if it is a small regular file of ours holding a socket path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (info.st_mode & 0o170000) != 0o100000 or info.st_uid != os.geteuid():
            return None  # only a record this user wrote tells where to connect
        if info.st_size > MAX_RECORD_BYTES:
            return None
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        record = json.loads(data.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("socket"), str):
        return None
    return record


def live_socket(path: str) -> str | None:
    """The socket of the record at `path`, if the daemon that wrote it still runs."""
    record = read(path)
    if record is None:
        return None
    pid = record.get("pid")
    if isinstance(pid, int) and pid > 0 and not _alive(pid):
        return None
    socket = record["socket"]
    return socket if isinstance(socket, str) and socket else None


def remove(path: str, *, pid: int | None = None) -> bool:
    """Remove the record if it is still the one `pid` (default: this process) wrote."""
    record = read(path)
    if record is None or record.get("pid") != (os.getpid() if pid is None else pid):
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


class Recorder:
    """The daemon's side: write the record once the socket listens, remove it at the end."""

    __slots__ = ("config", "path")

    def __init__(self, path: str, config: str) -> None:
        self.path = path
        self.config = config

    @classmethod
    def for_config(cls, config_path: object) -> Recorder | None:
        """The recorder of the daemon running `config_path`; None without a runtime folder."""
        from lmkeeperd.paths import runtime_dir

        config = str(config_path)
        try:
            folder = str(runtime_dir())
        except OSError:
            return None
        return cls(record_file(folder, config), os.path.realpath(os.path.expanduser(config)))

    def write(self, socket: str) -> str | None:
        """Write the record for `socket`; the error, if it could not be written."""
        try:
            write(self.path, socket=socket, config=self.config)
        except OSError as e:
            return e.strerror or str(e)
        return None

    def remove(self) -> None:
        remove(self.path)  # one left behind names a dead pid: the CLI ignores it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, though not the daemon we look for
    except OSError:
        return True
    return True
