"""The control handler (lmkeeperd/daemon/control_handler.py) in process, with a real core.

The requests are the parsed frames the control server hands over; the server
itself (framing, modes, peers) is tested in tests/control/test_control_server.py.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
from daemon_harness import loads_of, unloads_of
from inprocess_harness import config_for, inprocess_daemon, load, run, until

from lmkeeperd.config import MemoryConfig
from lmkeeperd.control import protocol as proto
from lmkeeperd.control.server import Connection
from lmkeeperd.core import State
from lmkeeperd.daemon import selection, selection_check
from lmkeeperd.emulator import Emulator

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
C = "google/gemma-3-12b"


def test_select_is_stored_for_the_next_start_and_loads(emulator: Emulator, tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            conn = Connection(1, None)
            reply = await d.handler.handle(conn, proto.Select(f"  {A} "))
            # `memory` only when the model may not fit here (L12): this machine's business.
            assert reply["ok"] is True and set(reply) <= {"ok", "memory"}
            stored = selection.load(d.state_file)
            assert stored == selection.StoredSelection(A, "")
            await until(lambda: d.core.state is State.LOADED, "the load")
            assert loads_of(emulator) == [A]
            empty = await d.handler.handle(conn, proto.Select("  "))
            assert empty == {"ok": True, "ignored": "empty model key"}

    run(main())


def test_a_select_reply_has_the_selection_in_place_and_its_fsync_follows(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bytes] = []  # what each regular file fsynced held
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            synced.append(os.pread(fd, 4096, 0))
        fsync(fd)

    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            await load(d, A)
            monkeypatch.setattr(os, "fsync", recording_fsync)
            conn = Connection(1, None)
            for model in (B, A, B):
                assert (await d.handler.handle(conn, proto.Select(model)))["ok"] is True
                # In place before the reply: a start after a kill -9 now restores it.
                assert selection.load(d.state_file) == selection.StoredSelection(model, "")
            last = d.state_file.read_bytes()
            await until(lambda: last in synced, "the last selection fsynced")

    run(main())


def test_streams_belong_to_their_connection_and_end_with_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            one, two = Connection(1, None), Connection(2, None)
            first = await d.handler.handle(one, proto.StreamStart())
            second = await d.handler.handle(one, proto.StreamStart())
            assert first["ok"] and second["ok"] and first["stream"] != second["stream"]
            assert d.core.active_streams == 2
            reply = await d.handler.handle(two, proto.StreamEnd())
            assert reply == {"ok": False, "error": "stream_end: this connection has no open stream"}
            assert await d.handler.handle(one, proto.StreamEnd()) == {"ok": True}  # the newest
            assert d.core.active_streams == 1
            gone = await d.handler.handle(one, proto.StreamEnd(second["stream"]))
            assert gone == {"ok": False, "error": f"stream_end: no open stream {second['stream']}"}
            d.handler.connection_closed(one)  # L8: its last stream ends with it
            assert d.core.active_streams == 0

    run(main())


def test_unload_waits_for_the_server_and_names_a_model_loaded_behind_our_back(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            conn = Connection(1, None)
            await load(d, A)
            (ours,) = emulator.loaded()[A]
            assert await d.handler.handle(conn, proto.Unload()) == {"ok": True}
            assert unloads_of(emulator) == [ours] and A not in emulator.loaded()
            theirs = emulator.load_behind(B)
            assert await d.handler.handle(conn, proto.Unload(B)) == {"ok": True}  # L18
            assert unloads_of(emulator) == [ours, theirs] and emulator.loaded() == {}

    run(main())


def test_unload_by_name_says_when_the_server_is_unreachable(
    emulator: Emulator, tmp_path: Path
) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            emulator.go_down()
            reply = await d.handler.handle(Connection(1, None), proto.Unload(B))
            assert reply["ok"] is False and emulator.url in reply["error"]

    run(main())


def test_engine_and_status(emulator: Emulator, tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path) as d:
            conn = Connection(1, None)
            assert await d.handler.handle(conn, proto.Engine("ollama")) == {"ok": True}
            reply = await d.handler.handle(conn, proto.Status())
            assert reply["ok"] and reply["status"]["engine"] == "ollama"

    run(main())


def test_L24_L23_reselecting_a_resident_asks_lm_studio_nothing(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resident is known to exist and needs no room: no listing, no look (L23, L29).

    Every other selection lists the catalog afresh here (its cache is made 0 s long), so
    only residency can spare the listing; selecting C shows that it is still taken.
    """
    monkeypatch.setattr(selection_check, "CATALOG_MAX_AGE_S", 0.0)
    roomy = MemoryConfig(budget=100 * 10**9)  # only max_loaded limits
    config = replace(config_for(emulator, max_loaded=2), memory=roomy)

    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path, config) as d:
            conn = Connection(1, None)
            for model in (A, B):
                assert await d.handler.handle(conn, proto.Select(model)) == {"ok": True}
                await until(
                    lambda m=model: d.core.model == m and d.core.state is State.LOADED, model
                )
            assert d.core.residents.keys() == {A}
            mark = time.monotonic()
            for model in (A, B, B, A):
                assert await d.handler.handle(conn, proto.Select(model)) == {"ok": True}
                # Current at once (L24), and stored for the next start as any selection.
                assert d.core.model == model and d.core.state is State.LOADED
                assert selection.load(d.state_file) == selection.StoredSelection(model, "")
            assert [(r.method, r.path) for r in emulator.requests() if r.t > mark] == []
            assert loads_of(emulator) == [A, B]
            await d.handler.handle(conn, proto.Select(C))  # not resident: checked (L23)
            sent = [(r.method, r.path) for r in emulator.requests() if r.t > mark]
            assert sent[0] == ("GET", "/api/v1/models"), sent

    run(main())
