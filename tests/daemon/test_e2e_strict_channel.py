"""L19 end to end against the emulator's strict channel: LM Studio answering "not found"
with an rpcError even when asked not to (throwIfNotFound: false). lmkeeperd asks as
the official SDKs do (throwIfNotFound: true) and reads such an error as "not loaded",
so activity is still read and a direct generation longer than idle_timeout is never cut.

Generations are held open with the emulator's stream pacing; every wait is a
condition with a deadline.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import httpx
import pytest
from daemon_harness import DaemonProc, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
CHAT = "/v1/chat/completions"
IDLE = 2.0
CHUNKS = 60  # at 0.1 s a chunk: 6 s, three idle timeouts


def status_json(d: DaemonProc) -> dict[str, object]:
    done = d.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def generate(emulator: Emulator, model: str, outcome: dict[str, object]) -> None:
    """One streamed chat request straight to the emulator; counts its chunks."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    chunks, done = 0, False
    with (
        httpx.Client(timeout=60, trust_env=False) as http,
        http.stream("POST", emulator.url + CHAT, json=body) as answer,
    ):
        for line in answer.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks += 1
    outcome.update(chunks=chunks, done=done)


def test_L19_strict_channel_activity_is_read_and_a_long_generation_is_never_cut(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.set_channel_strict(True)
    d = daemon_factory(model={"idle_timeout": f"{IDLE}s"})
    # The watcher's first look asks for an instance that is not loaded: in strict mode an
    # rpcError, which must read as "not loaded", not as a broken channel.
    d.wait_status(activity_source="lmstudio", activity_reason=None, timeout=15)
    assert d.request({"op": "select", "model": A}) == {"ok": True}
    d.wait_status(state="loaded", model=A, timeout=15)
    assert status_json(d)["activity_source"] == "lmstudio"

    emulator.set_stream(0.1, CHUNKS)
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=generate, args=(emulator, A, outcome), daemon=True)
    thread.start()

    def generating() -> bool:
        seen = d.status().get("server_activity") or {}
        return bool(seen.get("doing") == "generating")

    wait_until(generating, 15, "status showing the model generating")
    during = status_json(d)
    assert during["activity_source"] == "lmstudio" and during["state"] == "streaming"
    thread.join(60)
    assert not thread.is_alive(), "the direct generation did not end"
    assert outcome == {"chunks": CHUNKS, "done": True}
    assert unloads_of(emulator) == [], "unloaded during a generation it could see"
    (chat,) = [r for r in emulator.requests() if r.path == CHAT]
    assert chat.t_done is not None
    assert chat.t_done - chat.t >= 2 * IDLE  # the generation outlasted idle_timeout

    # Idle again: ejected, counted from the generation's end, and still reading activity.
    d.wait_status(state="idle", model=None, timeout=10 + IDLE)
    (unload,) = [r for r in emulator.requests() if r.path == "/api/v1/models/unload"]
    assert unload.t - chat.t_done >= IDLE - 0.2, (unload.t, chat.t_done)
    assert status_json(d)["activity_source"] == "lmstudio"
    assert d.events("activity_blind") == []
