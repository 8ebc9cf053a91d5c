"""500 concurrent clients, each connected, streaming start/end and activity.

Targets: 0 errors; the daemon's RSS grows by at most 5 MiB over 100,000 requests.

All 500 connections are opened first and stay open. Each client then repeats
`stream_start`, `activity`, `stream_end` (with the id it got) until the clients together
have sent 100,000 requests; all run at once on one asyncio loop in this process. A model is
loaded, so streams move the daemon between `loaded` and `streaming`. An error is a reply that
is not `ok`, a connection that fails, or a stream count left over at the end.

RSS is read once all clients are connected and have made one warm-up round (the baseline),
and again after the 100,000 requests.

    .venv/bin/python bench/bench_clients.py [--quick]     (--quick: 100 clients, 20,000)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import psutil
from _harness import MODELS, Figure, emit, running

RSS_TARGET_MIB = 5.0


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(json.dumps(request).encode() + b"\n")
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("the daemon closed the connection")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("ok") is not True:
            raise RuntimeError(f"{request} was answered with {reply}")
        return reply

    async def round(self) -> None:
        stream = (await self.ask({"op": "stream_start"}))["stream"]
        await self.ask({"op": "activity"})
        await self.ask({"op": "stream_end", "stream": stream})

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def scenario(path: str, clients: int, total: int, proc: psutil.Process) -> dict[str, Any]:
    connected = [Client(*await asyncio.open_unix_connection(path)) for _ in range(clients)]
    errors: list[str] = []

    async def rounds(client: Client, n: int) -> None:
        for _ in range(n):
            try:
                await client.round()
            except Exception as e:
                errors.append(repr(e))
                return

    await asyncio.gather(*(rounds(c, 1) for c in connected))
    baseline = proc.memory_info().rss
    per_client = -(-total // (3 * clients))  # rounded up: at least `total` requests
    started = time.monotonic()
    await asyncio.gather(*(rounds(c, per_client) for c in connected))
    elapsed = time.monotonic() - started
    after = proc.memory_info().rss
    status = await connected[0].ask({"op": "status"})
    for c in connected:
        await c.close()
    return {
        "errors": errors,
        "requests": per_client * 3 * clients,
        "elapsed": elapsed,
        "growth_mib": (after - baseline) / 2**20,
        "rss_mib": after / 2**20,
        "streams_left": status["status"]["active_streams"],
    }


def run(quick: bool = False) -> list[Figure]:
    clients, total = (100, 20_000) if quick else (500, 100_000)
    with running(model={"idle_timeout": "30m"}) as (_emulator, daemon):
        daemon.request({"op": "select", "model": MODELS[0]})
        daemon.wait_status(state="loaded", model=MODELS[0], timeout=30)
        assert daemon.proc is not None
        proc = psutil.Process(daemon.proc.pid)
        result = asyncio.run(scenario(str(daemon.socket), clients, total, proc))
        alive = daemon.proc.poll() is None
    errors = len(result["errors"]) + (0 if result["streams_left"] == 0 else 1) + (not alive)
    detail = "; ".join(result["errors"][:3])
    return [
        emit(
            Figure(
                "clients",
                f"errors, {clients} concurrent clients",
                str(errors),
                "0",
                errors == 0,
                f"{result['requests']:,} requests in {result['elapsed']:.1f} s "
                f"({result['requests'] / result['elapsed']:,.0f}/s); "
                f"streams open at the end: {result['streams_left']}"
                + (f"; {detail}" if detail else ""),
            )
        ),
        emit(
            Figure(
                "clients",
                f"RSS growth over {result['requests']:,} requests",
                f"{result['growth_mib']:+.1f} MiB",
                "≤ 5 MiB",
                result["growth_mib"] <= RSS_TARGET_MIB,
                f"RSS at the end {result['rss_mib']:.1f} MiB",
            )
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
