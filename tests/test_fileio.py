"""fileio: reads that never block or bloat, writes that a crash cannot tear."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lmkeeperd.errors import UnsafeFileError
from lmkeeperd.fileio import read_small_file, sync_file, write_atomically


def test_reads_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    assert read_small_file(path, 5) == b"hello"


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "absent", 10)


def test_a_fifo_without_writer_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    # A plain open() of this FIFO would block forever; pytest's timeout would fire.
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(UnsafeFileError, match="is a FIFO; it must be a regular file"):
        read_small_file(path, 10, what="config file")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError, match="is a directory"):
        read_small_file(tmp_path, 10)


def test_a_device_is_refused() -> None:
    with pytest.raises(UnsafeFileError, match="character device"):
        read_small_file(Path("/dev/zero"), 10)


def test_a_file_over_the_cap_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with path.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: costs nothing on disk
    with pytest.raises(UnsafeFileError, match=r"is 1073741824 bytes; lmkeeperd reads at most 64"):
        read_small_file(path, 64, what="selection file")


def test_a_file_exactly_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 64)
    assert len(read_small_file(path, 64)) == 64


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    # Dotfile managers link configs into place: that must keep working.
    real = tmp_path / "real.toml"
    real.write_bytes(b"a = 1")
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    assert read_small_file(link, 100) == b"a = 1"


def test_write_atomically_replaces_with_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.json"
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["journal.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomically(path, b"old")

    with pytest.raises(TypeError):  # the write itself fails, after the temporary exists
        write_atomically(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_write_without_sync_is_in_place_at_once_and_sync_file_puts_it_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []  # the kind of each file fsynced, in order
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(stat.S_IFMT(os.fstat(fd).st_mode))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "state.json"
    write_atomically(path, b"one", sync=False)
    assert path.read_bytes() == b"one" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert synced == [] and os.listdir(tmp_path) == ["state.json"]
    sync_file(path)
    assert synced == [stat.S_IFREG, stat.S_IFDIR]  # the file, then the folder's entry
    synced.clear()
    write_atomically(path, b"two")
    assert synced == [stat.S_IFREG, stat.S_IFDIR]


def test_sync_file_of_a_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    sync_file(path)  # opened without blocking, and not a file to sync
