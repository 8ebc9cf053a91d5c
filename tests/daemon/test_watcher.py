"""The config file watcher, with real files: the platform's watcher and the polling fallback.

The negative checks ("no notification") wait a short while for one that must not come; that
is the only way to observe an absence.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lmkeeperd.daemon.watcher import FileWatcher, InotifyWatcher, PollingWatcher, watch_file

T = TypeVar("T")
WAIT_S = 5.0
QUIET_S = 0.3

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux")

Factory = Callable[[Path], FileWatcher]


def polling(path: Path) -> FileWatcher:
    return PollingWatcher(path, interval=0.01)


@pytest.fixture(params=[watch_file, polling], ids=["platform", "polling"])
def make_watcher(request: pytest.FixtureRequest) -> Factory:
    factory: Factory = request.param
    return factory


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


async def changed(watcher: FileWatcher, within: float = WAIT_S) -> bool:
    try:
        await asyncio.wait_for(watcher.wait_changed(), within)
    except TimeoutError:
        return False
    return True


async def quiet(watcher: FileWatcher) -> bool:
    return not await changed(watcher, QUIET_S)


def test_a_plain_write_is_noticed(tmp_path: Path, make_watcher: Factory) -> None:
    async def scenario() -> None:
        path = tmp_path / "config.toml"
        path.write_text("a = 1\n")
        watcher = make_watcher(path)
        try:
            path.write_text("a = 22\n")
            assert await changed(watcher)
            path.write_text("a = 333\n")
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


def test_an_atomic_rename_over_the_file_is_noticed_and_so_are_later_writes(
    tmp_path: Path, make_watcher: Factory
) -> None:
    async def scenario() -> None:
        path = tmp_path / "config.toml"
        path.write_text("a = 1\n")
        watcher = make_watcher(path)
        try:
            temporary = tmp_path / ".config.toml.swp"
            temporary.write_text("a = 22\n")
            os.replace(temporary, path)
            assert await changed(watcher)
            path.write_text("a = 333\n")  # the new inode is watched too
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


def test_delete_then_recreate_gives_a_notification_each(
    tmp_path: Path, make_watcher: Factory
) -> None:
    async def scenario() -> None:
        path = tmp_path / "config.toml"
        path.write_text("a = 1\n")
        watcher = make_watcher(path)
        try:
            path.unlink()
            assert await changed(watcher)
            path.write_text("a = 22\n")
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


def test_a_file_in_folders_that_do_not_exist_yet(tmp_path: Path, make_watcher: Factory) -> None:
    async def scenario() -> None:
        path = tmp_path / "config" / "lmkeeperd" / "config.toml"
        watcher = make_watcher(path)
        try:
            (tmp_path / "config").mkdir()
            (tmp_path / "config" / "lmkeeperd").mkdir()
            assert await quiet(watcher), "folders appearing are not a change of the file"
            path.write_text("a = 1\n")
            assert await changed(watcher)
            path.write_text("a = 22\n")
            assert await changed(watcher)
            shutil.rmtree(tmp_path / "config")
            assert await changed(watcher)
            path.parent.mkdir(parents=True)
            path.write_text("a = 1\n")
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


def test_a_burst_of_writes_gives_few_notifications(tmp_path: Path, make_watcher: Factory) -> None:
    async def scenario() -> None:
        path = tmp_path / "config.toml"
        path.write_text("")
        watcher = make_watcher(path)
        try:
            for i in range(20):
                path.write_text("x" * (i + 1))
            notifications = 0
            while await changed(watcher, QUIET_S):
                notifications += 1
            assert 1 <= notifications < 20
        finally:
            watcher.close()

    run(scenario())


def test_other_files_in_the_same_folder_do_not_count(tmp_path: Path, make_watcher: Factory) -> None:
    async def scenario() -> None:
        path = tmp_path / "config.toml"
        path.write_text("a = 1\n")
        watcher = make_watcher(path)
        try:
            (tmp_path / "other.toml").write_text("b = 2\n")
            os.replace(tmp_path / "other.toml", tmp_path / "renamed.toml")
            (tmp_path / "renamed.toml").unlink()
            (tmp_path / "sub").mkdir()
            assert await quiet(watcher)
            path.write_text("a = 22\n")  # and the watcher still works
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


@linux_only
def test_edits_to_the_target_of_a_symlinked_config_are_noticed(
    tmp_path: Path, make_watcher: Factory
) -> None:
    async def scenario() -> None:
        dotfiles = tmp_path / "dotfiles"
        dotfiles.mkdir()
        real = dotfiles / "lmkeeperd.toml"
        real.write_text("a = 1\n")
        (tmp_path / "config").mkdir()
        path = tmp_path / "config" / "config.toml"
        path.symlink_to(real)
        watcher = make_watcher(path)
        try:
            temporary = dotfiles / ".lmkeeperd.toml.tmp"
            temporary.write_text("a = 22\n")
            os.replace(temporary, real)
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


@linux_only
@pytest.mark.parametrize("relative", ["config.toml", "not/yet/there/config.toml"])
def test_linux_uses_inotify_not_polling(tmp_path: Path, relative: str) -> None:
    watcher = watch_file(tmp_path / relative)
    try:
        assert isinstance(watcher, InotifyWatcher)
    finally:
        watcher.close()


def test_a_relative_path_stays_bound_to_the_folder_it_was_given_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path)
        watcher = watch_file(Path("config.toml"))
        try:
            monkeypatch.chdir(tmp_path / "elsewhere")
            (tmp_path / "config.toml").write_text("a = 1\n")
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())


def _open_fds() -> int:
    folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return len(os.listdir(folder))


@pytest.mark.parametrize("exists", [True, False])
def test_close_releases_the_fds_and_ends_a_pending_wait(tmp_path: Path, exists: bool) -> None:
    async def scenario() -> None:
        path = tmp_path / "missing" / "config.toml"
        if exists:
            path.parent.mkdir()
            path.write_text("a = 1\n")
        before = _open_fds()
        watcher = watch_file(path)
        if isinstance(watcher, InotifyWatcher):
            assert _open_fds() > before
        waiting = asyncio.create_task(watcher.wait_changed())
        await asyncio.sleep(0)  # let the wait start
        assert not waiting.done()
        watcher.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        watcher.close()  # idempotent
        assert _open_fds() == before
        with pytest.raises(RuntimeError, match="closed"):
            await watcher.wait_changed()

    run(scenario())


def test_polling_close_ends_a_pending_wait(tmp_path: Path) -> None:
    async def scenario() -> None:
        watcher = PollingWatcher(tmp_path / "config.toml", interval=60)
        waiting = asyncio.create_task(watcher.wait_changed())
        await asyncio.sleep(0)
        watcher.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(RuntimeError, match="closed"):
            await watcher.wait_changed()

    run(scenario())


def test_a_second_concurrent_wait_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        watcher = watch_file(tmp_path / "config.toml")
        try:
            first = asyncio.create_task(watcher.wait_changed())
            await asyncio.sleep(0)
            if isinstance(watcher, InotifyWatcher):
                with pytest.raises(RuntimeError, match="already waiting"):
                    await watcher.wait_changed()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            watcher.close()

    run(scenario())


@linux_only
def test_a_change_seen_by_a_cancelled_wait_is_not_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "config.toml"
        path.write_text("a = 1\n")
        watcher = watch_file(path)
        try:
            path.write_text("a = 22\n")
            waiting = asyncio.create_task(watcher.wait_changed())
            # Run the wait until it has read the event and sits in its coalescing window.
            for _ in range(100_000):
                if getattr(watcher, "_pending", False):
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError("the wait never saw the write")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await changed(watcher)
        finally:
            watcher.close()

    run(scenario())
