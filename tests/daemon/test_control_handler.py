"""The control handler (lmkeeperd/daemon/control_handler.py) in process, with a real core.

The requests are the parsed frames the control server hands over; the server
itself (framing, modes, peers) is tested in tests/control/test_control_server.py.
"""

from __future__ import annotations

from pathlib import Path

from daemon_harness import loads_of, unloads_of
from inprocess_harness import inprocess_daemon, load, run, until

from lmkeeperd.control import protocol as proto
from lmkeeperd.control.server import Connection
from lmkeeperd.core import State
from lmkeeperd.daemon import selection
from lmkeeperd.emulator import Emulator

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"


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
