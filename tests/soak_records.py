"""The chaos soak's plan, records and constants (tests/daemon/test_e2e_soak.py runs it).

The soak's module docstring defines the invariants; soak_watch.py judges them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

SELECTABLE = (
    "qwen/qwen3-4b-2507",
    "meta-llama/llama-3.1-8b-instruct",
    "qwen/qwen2.5-0.5b-instruct",
    "google/gemma-3-12b",
    "openai/gpt-oss-20b",
)
FOREIGN = ("qwen/qwen3-32b", "deepseek/deepseek-v3-0324", "text-embedding-nomic-embed-text-v1.5")
UNKNOWN = "nobody/no-such-model"
# Residency (L24-L28, L30): up to MAX_LOADED selected models stay resident beside PINNED
# (selectable too), all within BUDGET (GB = 10^9 bytes; lmkeeperd's `[memory] budget`).
MAX_LOADED = 3
PINNED = "qwen/qwen2.5-0.5b-instruct"
BUDGET_GB = 10.0
DAEMON_CTX = 2048
BEHIND_CTX = 1111
UNLOAD_PATH = "/api/v1/models/unload"
LOAD_PATH = "/api/v1/models/load"
MODELS_PATH = "/api/v1/models"
REPLY_TIMEOUT_S = 15.0
SETTLE_TIMEOUT_S = 30.0
MAX_STREAMS_PER_CLIENT = 3
CLIENTS = 4

CI_EVENTS = 1000  # CI's size; bench/bench_soak.py plays 20,000
DEFAULT_SEED = 20260101
CI_RSS_GROWTH_MIB = 12.0  # generous: a leak of even a few hundred bytes per event shows

# Relative weights of the driver's events; faults are events too.
WEIGHTS: dict[str, float] = {
    "select": 14,
    "stream_start": 8,
    "stream_end": 11,
    "disconnect": 3,
    "activity": 8,
    "status": 4,
    "engine_away": 0.4,
    "config_valid": 3,
    "config_invalid": 1.5,
    "sighup": 1,
    "unload_command": 2.5,
    "bad_request": 1,
    "fault_load_delay": 2,
    "fault_fail_loads": 0.5,
    "fault_hang_unloads": 1,
    "fault_restart": 0.4,
    "load_behind": 2,
    "unload_behind": 2,
    "pause": 1.2,
    "fault_load_timeout": 0.5,
    "fault_crash": 0.25,
    "quiet_point": 0.3,
    "fault_guardrail": 0.8,  # LM Studio's load guardrail on for a while (L27)
}
LOAD_TIMEOUT_S = 0.6  # the soak's `load_timeout`: the load-timeout fault's delays outlast it
OUTAGE_MAX_S = 0.3  # the longest server restart (everything forgotten when it is back)
QUIET_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class SoakPlan:
    events: int = CI_EVENTS
    seed: int = DEFAULT_SEED
    mean_gap_s: float = 0.002  # the pause between two events is exponential with this mean
    # Residency on (max_loaded, pinned, budget, guardrail faults) or one model at a time.
    residency: bool = True


@dataclass(slots=True)
class StreamRecord:
    stream: int
    client: int
    acked: float
    protects: bool
    generation: int = 0  # which daemon process (crashes restart it; stream ids start over)
    model: str | None = None  # the model it names (L24): only that model's unload is barred
    until: float = float("inf")  # when protection ended (see invariant 1)


@dataclass(slots=True)
class Command:
    model: str | None
    sent: float
    replied: float = float("inf")
    reply: dict[str, Any] | None = None


@dataclass(slots=True)
class Snapshot:
    before: float
    after: float
    instances: dict[str, list[tuple[str, int | None]]]  # key -> [(instance id, context)]


@dataclass(slots=True)
class SoakResult:
    plan: SoakPlan
    events: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    daemon_events: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    seconds: float = 0.0
    exit_code: int | None = None

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_end_mib - self.rss_start_mib

    def summary(self) -> dict[str, Any]:
        return {
            "events": sum(self.events.values()),
            "seed": self.plan.seed,
            "seconds": round(self.seconds, 1),
            "event_mix": dict(sorted(self.events.items())),
            "checks": dict(sorted(self.checks.items())),
            "daemon_events": dict(sorted(self.daemon_events.items())),
            "violations": self.violations,
            "rss_start_mib": round(self.rss_start_mib, 1),
            "rss_end_mib": round(self.rss_end_mib, 1),
            "rss_growth_mib": round(self.rss_growth_mib, 1),
            "exit_code": self.exit_code,
        }


class LineClient:
    """One control-socket connection, with the times requests left and replies came."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT_S)
        self.sock.connect(str(path))
        self._buffer = b""
        self.streams: list[int] = []  # open, oldest first

    def ask(self, obj: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
        """(reply, when the request began to leave, when the reply had arrived)."""
        sent = time.monotonic()
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the daemon closed the connection after {obj}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply, sent, time.monotonic()

    def close(self, abrupt: bool = False) -> None:
        if abrupt:
            # SO_LINGER with a zero timeout: close() resets the connection, as a crash would.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def _instance_key(instance_id: str) -> str:
    key, sep, suffix = instance_id.rpartition(":")
    return key if sep and suffix.isdigit() else instance_id


def _log_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
