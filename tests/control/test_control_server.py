"""The control socket server over real Unix sockets: requests and replies, framing, peers.

The request handler is a small fake (control_harness.py): these tests are about the socket,
not about what the daemon answers.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import structlog
from control_harness import (
    FakeHandler,
    Peer,
    error_of,
    linux_only,
    run,
    serving,
    until,
)

from lmkeeperd.control.protocol import (
    MAX_LINE,
)

# --- requests and replies -------------------------------------------------------------------


def test_each_op_goes_through_the_handler_and_back(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (_server, handler):
            peer = await Peer.connect(folder / "s.sock")
            assert await peer.ask({"op": "select", "model": "m1"}) == {"ok": True, "model": "m1"}
            assert await peer.ask({"op": "activity"}) == {"ok": True}
            assert await peer.ask({"op": "stream_start"}) == {"ok": True, "stream": 1}
            assert await peer.ask({"op": "stream_end", "stream": 1}) == {"ok": True}
            assert await peer.ask({"op": "stream_end"}) == {"ok": True}
            assert await peer.ask({"op": "engine", "name": "lmstudio"}) == {"ok": True}
            assert await peer.ask({"op": "unload"}) == {"ok": True}
            assert await peer.ask({"op": "unload", "model": "m2"}) == {"ok": True}
            status = await peer.ask({"op": "status"})
            assert status["ok"] is True
            await peer.close()
            ops = [request.op for _conn, request in handler.requests]
            assert ops == [
                "select",
                "activity",
                "stream_start",
                "stream_end",
                "stream_end",
                "engine",
                "unload",
                "unload",
                "status",
            ]
            assert {conn for conn, _ in handler.requests} == {status["status"]["conn"]}

    run(scenario())


def test_pipelined_requests_get_their_replies_in_order(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            batch = b"".join(
                json.dumps({"op": "select", "model": f"m{i}"}).encode() + b"\n" for i in range(200)
            )
            await peer.send(batch)
            replies = [await peer.reply() for _ in range(200)]
            assert [r["model"] for r in replies] == [f"m{i}" for i in range(200)]
            await peer.close()

    run(scenario())


def test_a_slow_request_does_not_hold_up_other_connections(folder: Path) -> None:
    async def scenario() -> None:
        handler = FakeHandler()
        handler.gate = asyncio.Event()
        async with serving(folder, handler) as _:
            slow = await Peer.connect(folder / "s.sock")
            other = await Peer.connect(folder / "s.sock")
            await slow.send({"op": "unload"})
            await until(lambda: len(handler.requests) == 1, "the unload to reach the handler")
            assert (await other.ask({"op": "status"}))["ok"] is True
            handler.gate.set()
            assert await slow.reply() == {"ok": True}
            await slow.close()
            await other.close()

    run(scenario())


def test_handler_errors_are_replied_and_the_connection_stays_open(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            with structlog.testing.capture_logs() as logs:
                refused = await peer.ask({"op": "select", "model": "boom"})
                crashed = await peer.ask({"op": "select", "model": "crash"})
                unencodable = await peer.ask({"op": "select", "model": "not-json"})
            assert error_of(refused) == "LM Studio has no model named boom"
            assert "internal error while handling select" in error_of(crashed)
            assert "internal error" in error_of(unencodable)
            errors = [e for e in logs if e["event"] == "control_error"]
            assert len(errors) == 2
            assert all(isinstance(e["conn"], int) for e in errors)
            assert (await peer.ask({"op": "status"}))["ok"] is True
            await peer.close()

    run(scenario())


# --- framing ------------------------------------------------------------------------------


def test_request_errors_get_a_reply_and_the_connection_stays_open(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as (_server, handler):
            peer = await Peer.connect(folder / "s.sock")
            assert error_of(await peer.ask({"op": "foo"})).startswith('unknown op "foo"')
            assert error_of(await peer.ask({"op": "select"})) == 'select: missing field "model"'
            assert "must be a string" in error_of(await peer.ask({"op": "select", "model": 1}))
            assert error_of(await peer.ask({"model": "x"})).startswith('missing field "op"')
            assert (await peer.ask({"op": "status"}))["ok"] is True
            assert [r.op for _, r in handler.requests] == ["status"]
            await peer.close()

    run(scenario())


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"[1,2]\n", "expected a JSON object, got array"),
        (b'"status"\n', "expected a JSON object, got string"),
        (b"null\n", "expected a JSON object, got null"),
        (b"{not json}\n", "invalid JSON"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"\n", "invalid JSON"),
        (b"[" * 60_000 + b"\n", "invalid JSON"),
        (b'{"op":"status","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", "nested too deeply"),
    ],
)
def test_frames_that_are_not_json_objects_get_an_error_and_are_closed(
    folder: Path, frame: bytes, error: str
) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            assert error in error_of(await peer.ask(frame + b'{"op":"status"}\n'))
            assert await peer.rest_until_closed() == b""
            await peer.close()
            fresh = await Peer.connect(folder / "s.sock")
            assert (await fresh.ask({"op": "status"}))["ok"] is True
            await fresh.close()

    run(scenario())


def test_a_line_over_64_kib_gets_an_error_and_is_closed_others_are_unaffected(
    folder: Path,
) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            bystander = await Peer.connect(folder / "s.sock")
            at_limit = b'{"op":"status"}'.ljust(MAX_LINE) + b"\n"
            assert (await bystander.ask(at_limit))["ok"] is True

            for oversized in (b"x" * (MAX_LINE + 1), b'{"op":"status"}'.ljust(MAX_LINE + 1)):
                peer = await Peer.connect(folder / "s.sock")
                reply = await peer.ask(oversized + b"\n")
                assert error_of(reply) == "line too long (limit 65536 bytes)"
                assert await peer.rest_until_closed() == b""
                await peer.close()

            assert (await bystander.ask({"op": "status"}))["ok"] is True
            await bystander.close()

    run(scenario())


def test_a_line_without_end_beyond_64_kib_is_refused_before_it_ends(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            await peer.send(b"y" * (MAX_LINE + 1))  # no newline: the server must not wait
            assert error_of(await peer.reply()).startswith("line too long")
            await peer.close()

    run(scenario())


# --- peers --------------------------------------------------------------------------------


@linux_only
def test_the_handler_sees_the_peer_uid_and_pid(folder: Path) -> None:
    async def scenario() -> None:
        async with serving(folder) as _:
            peer = await Peer.connect(folder / "s.sock")
            status = (await peer.ask({"op": "status"}))["status"]
            assert (status["uid"], status["pid"]) == (os.getuid(), os.getpid())
            await peer.close()

    run(scenario())


def test_a_peer_with_a_uid_not_allowed_is_refused_and_closed(folder: Path) -> None:
    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            async with serving(folder, allowed_uids={os.getuid() + 4242}) as (_server, handler):
                peer = await Peer.connect(folder / "s.sock")
                reply = await peer.ask({"op": "status"})
                assert error_of(reply).startswith(f"permission denied: uid {os.getuid()} ")
                assert await peer.rest_until_closed() == b""
                await peer.close()
                assert handler.requests == []
        assert handler.closed == []  # the handler never saw that connection
        assert [e["peer_uid"] for e in logs if e["event"] == "control_peer_refused"] == [
            os.getuid()
        ]

    run(scenario())
