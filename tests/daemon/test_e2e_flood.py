"""The listeners under abuse, end to end: the real daemon under `ulimit -n 1024`.

Floods are real loopback connections, bounded in count and time and all closed at the
end (tests/flood.py). What is asserted is what must hold whatever the machine's speed:
the daemon keeps answering (with a generous functional timeout, not a speed bound), its
log stays small, it holds no more connections than its caps. Figures: bench/bench_flood.py.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from daemon_harness import DaemonProc, open_files, wait_until
from flood import held, tcp, unix

from lmkeeperd.control.server import MAX_CONNECTIONS as CONTROL_CAP
from lmkeeperd.daemon.control_handler import MAX_STREAMS_PER_CONNECTION
from lmkeeperd.emulator import Emulator
from lmkeeperd.proxy.server import MAX_CONNECTIONS as PROXY_CAP

pytestmark = pytest.mark.e2e

FLOOD = 2000
FLOOD_WITHIN_S = 60.0
NOFILE = 1024  # systemd's default soft limit
LOG_GROWTH_MAX = 100 * 1024
TOKEN = "lm-studio-token-0c9d41e7aa36"


def flooded_daemon(factory: Callable[..., DaemonProc], nofile: int = NOFILE) -> DaemonProc:
    # At the default log level (info): at debug the control socket logs every connection.
    d = factory(start=False, proxy={"listen": "127.0.0.1:0"}, log={"level": "info"})
    d.start(nofile=nofile)
    return d


def proxy_port(d: DaemonProc) -> int:
    return int(str(d.status()["proxy"]["listen"]).rsplit(":", 1)[1])


def status_answers(d: DaemonProc) -> None:
    """`lmkeeperd status` answers, within a generous functional bound (not a speed check)."""
    out = d.cli("status", "--json", timeout=30)
    assert out.returncode == 0, out.stderr
    reply = d.request({"op": "status"}, timeout=5)
    assert reply["ok"], reply


def test_2000_connections_held_against_the_proxy(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = flooded_daemon(daemon_factory)
    port = proxy_port(d)
    assert d.proc is not None
    before = d.log_path.stat().st_size
    with held(tcp(port), FLOOD, FLOOD_WITHIN_S) as flood:
        assert flood.opened > PROXY_CAP, flood
        status_answers(d)
        # A real client still gets through: a silent connection makes room for it.
        with httpx.Client(trust_env=False, timeout=10) as c:
            assert c.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
        fds = open_files(d.proc.pid)
        assert fds is None or fds < PROXY_CAP + CONTROL_CAP, fds
    status_answers(d)
    grown = d.log_path.stat().st_size - before
    assert grown < LOG_GROWTH_MAX, grown
    assert "Traceback" not in d.log_text()
    shed = d.events("connections_shed", listener="proxy")
    assert shed and sum(e["count"] for e in shed) <= flood.opened


def test_2000_connections_held_against_the_control_socket(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = flooded_daemon(daemon_factory)
    assert d.proc is not None
    before = d.log_path.stat().st_size
    with held(unix(str(d.socket)), FLOOD, FLOOD_WITHIN_S) as flood:
        assert flood.opened > CONTROL_CAP, flood
        status_answers(d)
        fds = open_files(d.proc.pid)
        assert fds is None or fds < PROXY_CAP + CONTROL_CAP, fds
    status_answers(d)
    grown = d.log_path.stat().st_size - before
    assert grown < LOG_GROWTH_MAX, grown
    assert "Traceback" not in d.log_text()
    assert d.events("connections_shed", listener="control")


def test_running_out_of_descriptors_is_one_event_per_burst_not_a_traceback_per_accept(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    # A limit far below the proxy's cap: accept() itself fails with EMFILE.
    d = flooded_daemon(daemon_factory, nofile=64)
    port = proxy_port(d)
    before = d.log_path.stat().st_size
    with held(tcp(port, timeout=0.2), 400, 30.0):
        event = d.wait_event("accept_failed", timeout=30)
        assert event["errno"] == "EMFILE" and event["count"] == 1
        assert event["address"] == f"127.0.0.1:{port}"
        # asyncio retries the accept every second: the repeats come as one summary line.
        summary = wait_until(
            lambda: [e for e in d.events("accept_failed") if e["count"] > 1], 30, "a summary"
        )[0]
        assert summary["errno"] == "EMFILE"
    # Once the flood is gone (the head timeout frees the silent ones), all is well again.
    wait_until(lambda: d.request({"op": "status"}, timeout=2)["ok"], 60, "status after")
    assert d.proc is not None and d.proc.poll() is None
    grown = d.log_path.stat().st_size - before
    assert grown < LOG_GROWTH_MAX, grown
    assert "Traceback" not in d.log_text()
    assert len(d.events("accept_failed")) <= 3  # the first one, then a summary per 10 s


# --- who may use the proxy ------------------------------------------------------------------


def test_with_inject_token_foreign_host_and_origin_get_403_and_no_token(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    emulator.set_token(TOKEN)
    d = daemon_factory(
        env={"LM_API_TOKEN": TOKEN}, proxy={"listen": "127.0.0.1:0", "inject_token": True}
    )
    port = proxy_port(d)
    url = f"http://127.0.0.1:{port}/v1/models"
    before = len(emulator.requests())
    with httpx.Client(trust_env=False, timeout=10) as c:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            assert c.get(url, headers={"Host": host}).status_code == 200, host
        own = c.get(url, headers={"Origin": f"http://localhost:{port}"})
        assert own.status_code == 200
        forwarded = len(emulator.requests())
        refused = [
            c.get(url, headers={"Host": f"attacker.example:{port}"}),  # DNS rebinding
            c.post(url, headers={"Origin": "https://attacker.example"}, content=b"{}"),
            c.get(url, headers={"Origin": "null"}),
            c.get(url, headers={"Origin": "http://localhost:3000"}),  # not the proxy's origin
        ]
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "forbidden"
        assert TOKEN not in answer.text
    assert "Host 'attacker.example" in refused[0].json()["error"]["message"]
    assert "Origin 'https://attacker.example'" in refused[1].json()["error"]["message"]
    assert forwarded > before and len(emulator.requests()) == forwarded  # none reached it
    assert TOKEN not in d.log_text()


def test_without_inject_token_only_a_foreign_origin_is_refused(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    url = f"http://127.0.0.1:{proxy_port(d)}/v1/models"
    with httpx.Client(trust_env=False, timeout=10) as c:
        assert c.get(url, headers={"Host": "lmstudio.lan:1234"}).status_code == 200
        assert c.get(url, headers={"Origin": "http://localhost:3000"}).status_code == 200
        assert c.get(url, headers={"Origin": "http://127.0.0.1:8080"}).status_code == 200
        assert c.get(url, headers={"Origin": "https://attacker.example"}).status_code == 403
        assert c.get(url, headers={"Origin": "null"}).status_code == 403


# --- streams belong to their connection -----------------------------------------------------


def test_stream_end_of_another_connections_stream_is_an_error(daemon: DaemonProc) -> None:
    with daemon.client() as owner, daemon.client() as other:
        stream = owner.request({"op": "stream_start"})["stream"]
        reply = other.request({"op": "stream_end", "stream": stream})
        assert reply["ok"] is False and "another connection's" in reply["error"]
        assert daemon.status()["active_streams"] == 1
        assert owner.request({"op": "stream_end", "stream": stream}) == {"ok": True}
    assert daemon.status()["active_streams"] == 0


def test_streams_per_connection_are_capped(daemon: DaemonProc) -> None:
    with daemon.client() as c:
        for _ in range(MAX_STREAMS_PER_CONNECTION):
            assert c.request({"op": "stream_start"})["ok"]
        over = c.request({"op": "stream_start"})
        assert over["ok"] is False and str(MAX_STREAMS_PER_CONNECTION) in over["error"]
        assert c.request({"op": "stream_end"}) == {"ok": True}
        assert c.request({"op": "stream_start"})["ok"]  # room again
        with daemon.client() as other:  # the cap is per connection
            assert other.request({"op": "stream_start"})["ok"]
        assert daemon.status()["active_streams"] == MAX_STREAMS_PER_CONNECTION
    wait_until(lambda: daemon.status()["active_streams"] == 0, 10, "streams ended on close")
