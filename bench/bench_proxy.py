"""What the proxy costs: direct to the emulator vs through lmkeeperd's proxy, side by side.

Not a test: prints one line per figure, each naming the machine. Run from the repo root:

    .venv/bin/python bench/bench_proxy.py            # the full run (about a minute)
    .venv/bin/python bench/bench_proxy.py --quick    # fewer rounds, for a smoke run

Three processes, as in real use: the emulator (standing in for LM Studio), the
real daemon (`lmkeeperd run`, proxy on, log level info) and this script as the
client. The client is a minimal blocking HTTP/1.1 client on keep-alive
connections with TCP_NODELAY, so what it adds is tiny and the same both ways.
Direct and proxied requests take turns, one by one, so drift (CPU frequency,
other load) hits both alike; "added" is the median (p99) of the per-pair
differences. Each line ends with the machine and its load average.

Figures:
- small request: a non-streamed chat completion, latency p50/p99, direct and
  proxied, and the difference (target: <= 1 ms added at p50);
- first SSE chunk: time from sending a streamed request to its first event
  (target: <= 1 ms added at p50);
- fast stream: throughput of a stream with no pause between events (target:
  proxied >= 95 % of direct);
- 200 concurrent streams through the proxy (target: 0 errors);
- the daemon's CPU time per 1,000 proxied small requests, and while idle;
- a breakdown: the same figures for the proxy alone, with a do-nothing daemon
  behind it, to tell the proxy's cost from the daemon's per-stream bookkeeping.

The emulator is Python's ThreadingHTTPServer, which sends headers and body
in separate writes; without TCP_NODELAY on its side every answer would wait
for a delayed ACK (~40 ms), in both columns alike, and drown the figures.
LM Studio (Node) sets TCP_NODELAY, so the emulator is run with it here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmkeeperd.control.client import request as control_request  # noqa: E402

MODEL = "qwen/qwen3-4b-2507"

_EMULATOR = """
import sys
from lmkeeperd.emulator.handler import EmulatorRequestHandler
EmulatorRequestHandler.disable_nagle_algorithm = True  # see the module docstring
from lmkeeperd.emulator.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


# The proxy alone, with a do-nothing daemon behind it: what the proxy costs without the
# daemon's own bookkeeping (the core, its log lines) for each stream it opens.
_BARE_PROXY = """
import asyncio, itertools, sys
from lmkeeperd import logs
from lmkeeperd.proxy import ProxyServer, ProxySettings

class Hooks:
    ids = itertools.count(1)
    def activity(self): pass
    def stream_opened(self): return next(self.ids)
    def stream_closed(self, stream): pass
    async def stream_for(self, model, *, max_wait): return next(self.ids)

async def main():
    logs.setup("warning")
    proxy = ProxyServer("127.0.0.1", 0, metrics=str, hooks=Hooks(),
                        settings=ProxySettings(upstream=sys.argv[1]))
    await proxy.start()
    print(proxy.address, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


# --- a minimal HTTP/1.1 client ------------------------------------------------------


class Conn:
    """One keep-alive connection; `request` returns (status, body, t_first_body_byte)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def request(
        self, path: str, body: bytes, on_chunk: Callable[[bytes], None] | None = None
    ) -> tuple[int, bytes, float]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])
        }
        first = 0.0
        if headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    break
                chunk = self._take(size)
                if not first:
                    first = time.perf_counter()
                if on_chunk is not None:
                    on_chunk(chunk)
                parts.append(chunk)
                self._take(2)
            return status, b"".join(parts), first
        data = self._take(int(headers[b"content-length"]))
        return status, data, time.perf_counter()


def chat(stream: bool) -> bytes:
    messages = [{"role": "user", "content": "Say hello."}]
    return json.dumps({"model": MODEL, "messages": messages, "stream": stream}).encode()


# --- the processes ----------------------------------------------------------------------


def _post(url: str, path: str, payload: dict[str, object]) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = Conn((host, int(port)))
    try:
        conn.request(path, json.dumps(payload).encode())
    finally:
        conn.close()


@contextmanager
def emulator() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMULATOR, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit(f"the emulator did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def bare_proxy(upstream: str) -> Iterator[tuple[tuple[str, int], psutil.Process]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARE_PROXY, upstream], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().strip().rsplit(":", 1)
        yield (host, int(port)), psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def daemon(upstream: str) -> Iterator[tuple[tuple[str, int], psutil.Process]]:
    folder = Path(tempfile.mkdtemp(prefix="lkb", dir="/tmp"))
    sock = folder / "s.sock"
    config = folder / "config.toml"
    config.write_text(
        f'[server]\nurl = "{upstream}"\n'
        f'[model]\nselected = "{MODEL}"\nswitch_debounce = 0\n'
        f'[control]\nsocket = "{sock}"\n'
        '[proxy]\nlisten = "127.0.0.1:0"\n'
        '[log]\nlevel = "info"\nformat = "json"\n',
        encoding="utf-8",
    )
    env = dict(os.environ, STATE_DIRECTORY=str(folder / "state"))
    env.pop("NOTIFY_SOCKET", None)
    with open(folder / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmkeeperd", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    status = control_request(sock, {"op": "status"}, timeout=2)["status"]
                    if status["state"] == "loaded":
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(
                        "the daemon did not start:\n" + (folder / "daemon.log").read_text()
                    )
                time.sleep(0.05)
            host, port = status["proxy"]["listen"].rsplit(":", 1)
            yield (host, int(port)), psutil.Process(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)


# --- the figures ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(address: tuple[str, int], n: int, body: bytes, first_chunk: bool) -> list[float]:
    conn = Conn(address)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _, first = conn.request("/v1/chat/completions", body)
            end = first if first_chunk else time.perf_counter()
            if status != 200:
                raise SystemExit(f"status {status}")
            out.append(end - t0)
    finally:
        conn.close()
    return out


def side_by_side(
    direct: tuple[str, int], proxy: tuple[str, int], n: int, body: bytes, first: bool
) -> tuple[list[float], list[float]]:
    """`n` latencies each way, direct and proxied requests taking turns (paired samples).

    Taking turns request by request, and swapping which goes first, makes load
    from elsewhere on the machine hit both columns alike.
    """
    direct_conn, proxy_conn = Conn(direct), Conn(proxy)
    d: list[float] = []
    p: list[float] = []
    try:
        for i in range(n + 50):  # the first 50 pairs warm up both paths
            pair = [(direct_conn, d), (proxy_conn, p)]
            for conn, out in pair if i % 2 else pair[::-1]:
                t0 = time.perf_counter()
                status, _, first_byte = conn.request("/v1/chat/completions", body)
                end = first_byte if first else time.perf_counter()
                if status != 200:
                    raise SystemExit(f"status {status}")
                if i >= 50:
                    out.append(end - t0)
    finally:
        direct_conn.close()
        proxy_conn.close()
    return d, p


def added(d: list[float], p: list[float], q: float) -> float:
    """The q-quantile of the paired differences (proxied minus direct)."""
    return pct([b - a for a, b in zip(d, p, strict=True)], q)


def throughput(address: tuple[str, int]) -> tuple[float, float]:
    """(MB/s received, events/s) of one fast stream, as delivered to the client.

    The client only receives and looks for the end: its cost per read is the same
    however the events are framed (the proxy may join several events into one
    chunk), so the figure is what the server side delivers, not client parsing.
    """
    body = chat(True)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(address)
    parts: list[bytes] = []
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sock.sendall(head + body)
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed mid-stream")
            parts.append(data)
            tail = (tail + data)[-16:]
        seconds = time.perf_counter() - t0
    finally:
        sock.close()
    whole = b"".join(parts)
    return len(whole) / seconds / 1e6, whole.count(b"data: ") / seconds


def concurrent_streams(address: tuple[str, int], n: int) -> tuple[int, float]:
    """(errors, seconds) for `n` streams at once, each on its own connection."""
    errors = 0
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one() -> None:
        nonlocal errors
        ok = False
        try:
            conn = Conn(address)
            try:
                start.wait(30)
                status, data, _ = conn.request("/v1/chat/completions", chat(True))
                ok = status == 200 and data.rstrip().endswith(b"data: [DONE]")
            finally:
                conn.close()
        except Exception:
            ok = False
        if not ok:
            with lock:
                errors += 1

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, time.perf_counter() - t0


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds, n = (3, 400) if args.quick else (7, 3000)
    where = machine()
    print(f"machine: {where}")

    def tag() -> str:
        # The machine is often shared: each figure carries the load it was measured under.
        one, five, _ = os.getloadavg()
        return f"[{where}; load {one:.2f} {five:.2f}]"

    with emulator() as url, daemon(url) as (proxy, process):
        host, port = url.removeprefix("http://").split(":")
        direct = (host, int(port))
        ms = 1e3

        d, p = side_by_side(direct, proxy, n, chat(False), first=False)
        print(
            f"small request latency ({n} pairs): direct p50 {pct(d, 0.5) * ms:.3f} ms "
            f"p99 {pct(d, 0.99) * ms:.3f} ms | proxy p50 {pct(p, 0.5) * ms:.3f} ms "
            f"p99 {pct(p, 0.99) * ms:.3f} ms | added p50 {added(d, p, 0.5) * ms:.3f} ms "
            f"p99 {added(d, p, 0.99) * ms:.3f} ms (target: <= 1 ms at p50) {tag()}"
        )

        _post(url, "/_emulator/stream", {"interval": 0.0, "chunks": 20})
        d, p = side_by_side(direct, proxy, n // 2, chat(True), first=True)
        print(
            f"time to first SSE chunk ({n // 2} pairs): direct p50 {pct(d, 0.5) * ms:.3f} ms | "
            f"proxy p50 {pct(p, 0.5) * ms:.3f} ms | added p50 {added(d, p, 0.5) * ms:.3f} ms "
            f"p99 {added(d, p, 0.99) * ms:.3f} ms (target: <= 1 ms at p50) {tag()}"
        )

        _post(url, "/_emulator/stream", {"interval": 0.0, "chunks": 20000})
        throughput(direct), throughput(proxy)  # warm-up
        dt: list[tuple[float, float]] = []
        pt: list[tuple[float, float]] = []
        for _ in range(rounds):  # taking turns, as above
            dt.append(throughput(direct))
            pt.append(throughput(proxy))
        d_ev = statistics.median(x[1] for x in dt)
        p_ev = statistics.median(x[1] for x in pt)
        ratio = statistics.median(b[1] / a[1] for a, b in zip(dt, pt, strict=True))
        print(
            f"fast stream throughput (20,000 events, no pause, {rounds} pairs): direct "
            f"{d_ev:,.0f} events/s ({statistics.median(x[0] for x in dt):.1f} MB/s) | proxy "
            f"{p_ev:,.0f} events/s ({statistics.median(x[0] for x in pt):.1f} MB/s) | "
            f"proxy/direct {ratio * 100:.1f} % (median of pairs; target: >= 95 %) {tag()}"
        )

        _post(url, "/_emulator/stream", {"interval": 0.02, "chunks": 50})
        errors, seconds = concurrent_streams(proxy, 200)
        d_errors, d_seconds = concurrent_streams(direct, 200)
        print(
            f"200 concurrent streams (50 events, 20 ms apart): proxy {errors} errors in "
            f"{seconds:.2f} s | direct {d_errors} errors in {d_seconds:.2f} s "
            f"(target: 0 errors) {tag()}"
        )

        before = cpu_seconds(process)
        latencies(proxy, 1000, chat(False), first_chunk=False)
        used = cpu_seconds(process) - before
        idle_before = cpu_seconds(process)
        time.sleep(3.0)
        idle = cpu_seconds(process) - idle_before
        print(
            f"daemon CPU: {used * 1e3:.0f} ms per 1,000 proxied small requests "
            f"({used:.3f} ms/request); idle {idle * 1e3:.0f} ms over 3 s {tag()}"
        )

        with bare_proxy(url) as (bare, bare_process):
            _post(url, "/_emulator/stream", {"interval": 0.0, "chunks": 20})
            small_d, small_b = side_by_side(direct, bare, n, chat(False), first=False)
            first_d, first_b = side_by_side(direct, bare, n // 2, chat(True), first=True)
            before = cpu_seconds(bare_process)
            latencies(bare, 1000, chat(False), first_chunk=False)
            bare_used = cpu_seconds(bare_process) - before
        print(
            "breakdown, the proxy alone (a do-nothing daemon behind it): added p50 "
            f"{added(small_d, small_b, 0.5) * ms:.3f} ms small request, "
            f"{added(first_d, first_b, 0.5) * ms:.3f} ms first SSE chunk; "
            f"CPU {bare_used * 1e3:.0f} ms per 1,000 small requests {tag()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
