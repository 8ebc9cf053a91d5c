"""The proxy end to end: the real daemon process, its real proxy, the emulator upstream.

Clients are httpx (a real, independent HTTP client). Nothing is timed: where
pacing matters, what is checked is what the emulator or the daemon says at
the moment an event arrives (still producing? still streaming?).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from daemon_harness import DaemonProc, loads_of, unloads_of, wait_until

from lmkeeperd.emulator import Emulator

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
CHAT = "/v1/chat/completions"
TOKEN = "lm-studio-token-7f3a9c1e55b2"


def proxy_url(d: DaemonProc) -> str:
    return "http://" + str(d.status()["proxy"]["listen"])


def chat(model: str, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


class Streamer(threading.Thread):
    """Reads one streamed chat completion through the proxy, keeping every event."""

    def __init__(self, url: str, model: str, on_event: Callable[[int], None] | None = None):
        super().__init__(daemon=True)
        self.url, self.model, self.on_event = url, model, on_event
        self.events: list[str] = []
        self.status = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(trust_env=False, timeout=30) as c,
                c.stream("POST", self.url + CHAT, json=chat(self.model)) as r,
            ):
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line)
                        if self.on_event is not None:
                            self.on_event(len(self.events))
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        self.join(30)
        assert not self.is_alive(), "the stream never ended"
        if self.error is not None:
            raise self.error


def test_sse_arrives_as_it_is_produced_and_pins_the_model(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    url = proxy_url(d)
    emulator.set_stream(0.1, 8)
    seen: list[tuple[int, bool, str, int]] = []

    def on_event(n: int) -> None:
        status = d.status()
        # The emulator still producing when an event arrives: no event waited for the end.
        in_flight = emulator.requests()[-1].t_done is None
        seen.append((n, in_flight, status["state"], status["proxy"]["requests_in_flight"]))

    reader = Streamer(url, A, on_event)
    reader.run()  # in this thread: each event checked as it arrives
    assert reader.error is None and reader.status == 200
    assert reader.events[-1] == "data: [DONE]" and len(reader.events) == 9
    for n, in_flight, state, requests in seen[:7]:
        assert in_flight, f"event {n} arrived only after the emulator finished"
        assert state == "streaming" and requests == 1
    st = d.wait_status(state="loaded", active_streams=0)
    assert st["proxy"]["requests_total"] == 1 and st["proxy"]["last_request_at"]
    out = d.cli("status")
    assert out.returncode == 0 and f"proxy          {st['proxy']['listen']}" in out.stdout


def test_L7_L9_L11_a_long_stream_holds_off_idle_eject_and_a_switch(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        proxy={"listen": "127.0.0.1:0"},
        model={"idle_timeout": "1s", "switch_debounce": 0, "switch": "break-before-make"},
    )
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    emulator.set_stream(0.05, 50)  # 2.5 s, well past the 1 s idle timeout
    past_idle = threading.Event()

    def on_event(n: int) -> None:
        if n == 30:  # 1.5 s in
            past_idle.set()

    reader = Streamer(proxy_url(d), A, on_event)
    reader.start()
    d.wait_status(state="streaming")
    d.request({"op": "select", "model": B})
    d.wait_status(pending=B)
    assert past_idle.wait(20)
    st = d.status()
    assert st["state"] == "streaming" and st["model"] == A and st["pending"] == B
    assert unloads_of(emulator) == [] and st["idle_eject_in_s"] is None
    reader.finish()
    assert len(reader.events) == 51
    assert d.wait_event("unloaded", model=A)["reason"] == "switch"
    d.wait_event("load_finished", model=B)
    assert loads_of(emulator) == [A, B]
    # And with nothing streaming any more, the idle timer runs again (L9, L11).
    assert d.wait_event("unloaded", model=B)["reason"] == "idle"


def test_L8_a_client_that_leaves_mid_stream_releases_it(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded")
    emulator.set_stream(0.02, 5000)  # 100 s if nobody cut it
    with (
        httpx.Client(trust_env=False, timeout=30) as c,
        c.stream("POST", proxy_url(d) + CHAT, json=chat(A)) as r,
    ):
        chunks = r.iter_raw()  # held: a dropped iterator would close the response
        next(chunks)
        assert d.status()["state"] == "streaming"
    st = d.wait_status(active_streams=0, state="loaded")
    assert st["proxy"]["requests_in_flight"] == 0
    wait_until(lambda: emulator.requests()[-1].t_done is not None, what="the upstream to be cut")


def test_select_on_request_waits_for_streams_switches_once_and_forwards(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.set_jit(True)  # LM Studio's JIT would load behind our back: it must never need to
    d = daemon_factory(
        proxy={"listen": "127.0.0.1:0", "select_on_request": True},
        model={"switch_debounce": 0, "switch": "break-before-make"},
    )
    wait_until(lambda: d.status()["server"]["reachable"], what="the server's model list")
    url = proxy_url(d)
    with httpx.Client(trust_env=False, timeout=30) as c:
        # Nothing loaded: the first request for A loads it, then goes through.
        r = c.post(url + CHAT, json=chat(A, stream=False))
        assert r.status_code == 200 and r.json()["model"] == A
        assert loads_of(emulator) == [A]

    emulator.set_stream(0.05, 30)
    streaming = Streamer(url, A)
    streaming.start()
    d.wait_status(state="streaming")
    answer: dict[str, Any] = {}

    def ask_for_b() -> None:
        with httpx.Client(trust_env=False, timeout=30) as c:
            answer["r"] = c.post(url + CHAT, json=chat(B, stream=False))

    waiter = threading.Thread(target=ask_for_b, daemon=True)
    waiter.start()
    st = d.wait_status(pending=B)
    wait_until(lambda: d.status()["proxy"]["waiting_for_switch"] == 1, what="B's request waiting")
    assert st["state"] == "streaming" and emulator.loaded() == {A: [A]}
    assert not [x for x in emulator.requests() if x.body and x.body.get("model") == B]
    streaming.finish()
    assert streaming.events[-1] == "data: [DONE]" and len(streaming.events) == 31  # not cut
    waiter.join(30)
    r = answer["r"]
    assert r.status_code == 200 and r.json()["model"] == B
    assert loads_of(emulator) == [A, B] and unloads_of(emulator) == [A]
    paths = [(x.path, (x.body or {}).get("model")) for x in emulator.requests()]
    assert paths.index(("/api/v1/models/load", B)) < paths.index((CHAT, B))
    assert emulator.loaded() == {B: [B]}

    with httpx.Client(trust_env=False, timeout=30) as c:
        # The current model goes straight through; a model the server lacks gets its own error.
        assert c.post(url + CHAT, json=chat(B, stream=False)).status_code == 200
        missing = c.post(url + CHAT, json=chat("nobody/no-such-model", stream=False))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert loads_of(emulator) == [A, B]
    assert d.status()["proxy"]["waiting_for_switch"] == 0


def test_100_concurrent_streams_through_the_proxy(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded")
    emulator.set_stream(0.01, 10)
    url = proxy_url(d)

    async def one(c: httpx.AsyncClient) -> list[str]:
        async with c.stream("POST", url + CHAT, json=chat(A)) as r:
            assert r.status_code == 200
            return [line async for line in r.aiter_lines() if line.startswith("data: ")]

    async def main() -> list[list[str]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(trust_env=False, timeout=60, limits=limits) as c:
            return await asyncio.gather(*(one(c) for _ in range(100)))

    results = asyncio.run(main())
    assert all(len(events) == 11 and events[-1] == "data: [DONE]" for events in results)
    st = d.wait_status(active_streams=0, state="loaded")
    assert st["proxy"]["requests_total"] == 100 and st["proxy"]["requests_in_flight"] == 0


def test_upstream_down_gives_a_clear_502_with_a_json_body(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    url = proxy_url(d)
    emulator.go_down()
    with httpx.Client(trust_env=False, timeout=30) as c:
        r = c.post(url + CHAT, json=chat(A, stream=False))
        assert r.status_code == 502
        error = r.json()["error"]
        assert error["code"] == "upstream_unreachable" and emulator.url in error["message"]
        emulator.come_back()
        assert c.get(url + "/v1/models").status_code == 200
    assert d.status()["active_streams"] == 0


def test_proxy_settings_apply_on_reload_and_the_address_needs_a_restart(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    before = d.status()["proxy"]
    assert before["select_on_request"] is False
    d.tables["proxy"].update(select_on_request=True, listen="127.0.0.1:1")
    d.write_config()
    d.wait_event("config_needs_restart", key="proxy.listen")
    after = d.wait_status()["proxy"]
    assert after["select_on_request"] is True and after["listen"] == before["listen"]


def test_a_proxy_address_in_use_stops_the_start_with_a_clear_error(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon_factory(start=False, proxy={"listen": f"127.0.0.1:{port}"})
        d.start(wait=False)
        assert d.wait_exit() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in d.events("daemon_start_failed")[0]["error"]
    assert not d.socket.exists()


def test_the_token_is_injected_and_never_logged(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.set_token(TOKEN)
    d = daemon_factory(
        env={"LM_API_TOKEN": TOKEN}, proxy={"listen": "127.0.0.1:0", "inject_token": True}
    )
    url = proxy_url(d)
    with httpx.Client(trust_env=False, timeout=30) as c:
        assert c.get(url + "/v1/models").status_code == 200  # ours, added
        wrong = c.get(url + "/v1/models", headers={"Authorization": "Bearer not-the-token"})
        # The client's own header is passed, never replaced: LM Studio refuses it (401).
        assert wrong.status_code == 401
        metrics = c.get(url + "/lmkeeperd/metrics").text
    unauthorized = [x for x in emulator.requests() if not x.authorized]
    assert len(unauthorized) == 1
    d.stop()
    assert TOKEN not in d.log_text() and TOKEN not in metrics
    assert "not-the-token" not in d.log_text()


def test_select_on_request_answers_503_when_the_load_fails_and_retries_on_the_next(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(
        proxy={"listen": "127.0.0.1:0", "select_on_request": True}, model={"switch_debounce": 0}
    )
    wait_until(lambda: d.status()["server"]["reachable"], what="the server's model list")
    emulator.fail_next_loads(1, message="not enough memory for this model")
    with httpx.Client(trust_env=False, timeout=30) as c:
        failed = c.post(proxy_url(d) + CHAT, json=chat(A, stream=False))
        assert failed.status_code == 503
        assert "not enough memory" in failed.json()["error"]["message"]
        assert not [x for x in emulator.requests() if x.path == CHAT]  # never forwarded
        again = c.post(proxy_url(d) + CHAT, json=chat(A, stream=False))
    assert again.status_code == 200 and loads_of(emulator) == [A, A]
    assert d.status()["proxy"]["waiting_for_switch"] == 0
