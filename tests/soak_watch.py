"""The chaos soak's watching side: snapshots, the checker thread, the log listener, quiet
points and the final verdicts (tests/daemon/test_e2e_soak.py defines the invariants).

`SoakWatch` is a mixin of `Soak`, which owns the state it reads (the daemon, the emulator,
the records of streams and commands) and the driving side.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import socket
import statistics
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import psutil
from soak_records import (
    DAEMON_CTX,
    FOREIGN,
    LOAD_PATH,
    MODELS_PATH,
    QUIET_TIMEOUT_S,
    SETTLE_TIMEOUT_S,
    UNLOAD_PATH,
    Snapshot,
    _instance_key,
    _log_time,
)


class SoakWatch:
    # --- watching ---------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot | None:
        before = time.monotonic()
        try:
            body = self.http.get(MODELS_PATH).json()
        except (httpx.HTTPError, ValueError):
            return None  # the server is down: nothing to see
        after = time.monotonic()
        instances = {
            m["key"]: [(i["id"], i.get("config", {}).get("context_length")) for i in loaded]
            for m in body.get("models", [])
            if (loaded := m.get("loaded_instances"))
        }
        return Snapshot(before, after, instances)

    def _check_loop(self) -> None:
        last_rss = 0.0
        while not self.stop.wait(0.02):
            if self.crashing.is_set():
                continue  # the soak kills the daemon on purpose: not an exit
            process = self.process
            assert process is not None
            if self.daemon.proc is not None and self.daemon.proc.poll() is not None:
                self.violate(f"the daemon exited (status {self.daemon.proc.returncode})")
                return
            self.result.checks["daemon alive"] += 1
            now = time.monotonic()
            if now - last_rss >= 0.2:
                last_rss = now
                with contextlib.suppress(psutil.Error):
                    rss = process.memory_info().rss / 2**20
                    self.result.rss_mib.append((float(self._event_index), rss))
            snapshot = self._snapshot()
            if snapshot is not None:
                self.snapshots.append(snapshot)

    def _start_listener(self) -> None:
        thread = threading.Thread(target=self._listen, daemon=True)
        self.listeners.append(thread)
        thread.start()

    def _listen(self) -> None:
        try:
            with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
                sock.settimeout(0.2)
                sock.connect(str(self.daemon.socket))
                sock.sendall(b'{"op": "subscribe"}\n')
                buffer = b""
                while not self.stop.is_set():
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        event = json.loads(line).get("event")
                        if event is not None:
                            self.result.daemon_events[str(event)] += 1
        except (OSError, ValueError) as e:
            if not self.crashing.is_set():
                self.violate(f"the subscription failed: {e!r}")

    # --- the end ------------------------------------------------------------------------------

    def _calm(self) -> None:
        """Faults off, clients gone, engine back: what a quiet point needs."""
        self.emu.hang_unloads(False)
        self.hang_until = 0
        self.emu.set_load_delay(0.0)
        self.emu.set_guardrail()
        self.guard_until = 0
        self.emu.wait_until(lambda: self.emu.phase == "up", timeout=10)
        for future in self.command_futures:
            future.result(timeout=60)
        now = time.monotonic()
        self._close_clients(now)
        for record in self.streams.values():
            record.until = min(record.until, now)
        if not self.hands_on:
            self._do_engine_back()

    def _in_flight_on_server(self) -> bool:
        return any(
            r.t_done is None and r.path in (LOAD_PATH, UNLOAD_PATH) for r in self.emu.requests()
        )

    def _quiet(self) -> None:
        """Invariant 7: at a quiet point the server holds what L22 allows, within a deadline."""
        self._calm()
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        steady = 0
        last = ""
        while time.monotonic() < deadline:
            status = self.daemon.status()
            quiet = (
                status["state"] in ("idle", "loaded")
                and status["pending"] is None
                and status["active_streams"] == 0
                and status["server"]["reachable"] is True
                and not self._in_flight_on_server()
            )
            snapshot = self._snapshot()
            orphans = None if snapshot is None else self._orphans(status, snapshot)
            last = f"status {status}, orphans {orphans}"
            if quiet and orphans == []:
                steady += 1
                if steady >= 3:
                    self.result.checks["L22 quiet points"] += 1
                    assert snapshot is not None
                    if (crowded := self._too_many(snapshot)) is not None:
                        self.violate(f"L25: at a quiet point {crowded}: {last}")
                    return
            else:
                steady = 0
            time.sleep(0.1)
        self.violate(f"L22: not quiet with nothing of ours left within {QUIET_TIMEOUT_S} s: {last}")

    def _settle(self) -> None:
        """Faults off, clients gone, engine back; then the status must match the server."""
        self.emu.fail_next_loads(0)
        self._calm()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        agreed = 0
        last = ""
        while time.monotonic() < deadline:
            status = self.daemon.status()
            on_server = self.emu.loaded()
            last = f"status {status}, server {on_server}"
            quiet = (
                status["state"] in ("idle", "loaded")
                and status["pending"] is None
                and status["active_streams"] == 0
                and status["server"]["reachable"] is True
            )
            model = status["model"]
            if (
                quiet
                and status["server"]["loaded"] == sorted(on_server)
                and (model is None or model in on_server)
                and (model is None) == (status["state"] == "idle")
            ):
                agreed += 1
                if agreed >= 3:  # steady over more than one reconcile
                    self.result.checks["final agreement"] += 1
                    self._check_orphans(status)
                    return
            else:
                agreed = 0
            time.sleep(0.2)
        self.violate(f"the daemon's status never matched the server once quiet: {last}")

    def _orphans(self, status: dict[str, Any], snapshot: Snapshot) -> list[str]:
        """Daemon-loaded instances L22 does not allow: all but one of each resident's."""
        allowed = self._residents_allowed(status)
        orphans: list[str] = []
        for key, instances in snapshot.instances.items():
            ours = [i for i, context in instances if context == DAEMON_CTX]
            if key in allowed:
                ours = ours[1:]  # a resident (L24): one instance
            if key not in self.released:
                orphans.extend(ours)
        return orphans

    def _check_orphans(self, status: dict[str, Any]) -> None:
        snapshot = self._snapshot()
        assert snapshot is not None
        orphans = self._orphans(status, snapshot)
        if orphans:
            self.violate(f"daemon-loaded instances left on the server: {orphans}")
        self.result.checks["orphan check"] += 1

    # --- the invariants, over the whole run -----------------------------------------------------

    def _check_log(self) -> None:
        lines = self.daemon.log_events()
        offset = time.time() - time.monotonic()
        opened: dict[tuple[int, int], int] = {}
        decisions: dict[str, list[tuple[int, float]]] = defaultdict(list)
        generation = -1
        for index, event in enumerate(lines):
            name = event.get("event")
            if name == "daemon_started":
                generation += 1  # the log is appended to by every daemon process in turn
            elif name == "stream_opened":
                opened[(generation, int(event["stream"]))] = index
            elif name == "unload_started":
                when = _log_time(str(event["time"])) - offset
                decisions[str(event["instance_id"])].append((index, when))
            elif event.get("level") in ("error", "critical"):
                self.violate(f"the daemon logged an error: {event}")
        requests = self.emu.requests()
        unloads = [r for r in requests if r.path == UNLOAD_PATH and isinstance(r.body, dict)]
        self._check_streams(unloads, opened, decisions)
        self._check_residency(requests)
        self._check_foreign(unloads)
        self._check_duplicates(unloads, decisions)

    def _check_streams(
        self,
        unloads: list[Any],
        opened: dict[tuple[int, int], int],
        decisions: dict[str, list[tuple[int, float]]],
    ) -> None:
        protecting = sorted(
            (r for r in self.streams.values() if r.protects and r.until > r.acked),
            key=lambda r: r.acked,
        )
        matched: dict[str, int] = Counter()
        for request in unloads:
            instance = str(request.body.get("instance_id"))
            position = matched[instance]
            matched[instance] += 1
            logged = decisions[instance]
            decision = logged[position] if position < len(logged) else None
            self.result.checks["unload vs streams"] += 1
            for record in protecting:
                if record.acked >= request.t:
                    break
                if request.t >= record.until or record.model != _instance_key(instance):
                    continue  # ended, or another model's stream (an idle resident may go, L25)
                registered = opened.get((record.generation, record.stream))
                if decision is not None and registered is not None and decision[0] < registered:
                    self.result.checks["unload in flight before a stream (excused)"] += 1
                    continue
                self.violate(
                    f"unload of {instance} reached the server {request.t - record.acked:.3f} s "
                    f"after stream {record.stream} was acknowledged, while it was open"
                )

    def _check_foreign(self, unloads: list[Any]) -> None:
        for request in unloads:
            instance = str(request.body.get("instance_id"))
            key = _instance_key(instance)
            if key not in FOREIGN:
                continue
            self.result.checks["foreign unload"] += 1
            if any(c.model == key and c.sent <= request.t <= c.replied for c in self.commands):
                continue
            # An unload command's unload the daemon journaled and had not seen done when it
            # was killed: the next daemon finishes it (L22) within moments of its start.
            if any(
                c.model == key and c.sent <= crash <= request.t <= crash + 5.0
                for c in self.commands
                for crash in self.crashes
            ):
                self.result.checks["foreign unload finished after a crash"] += 1
                continue
            self.violate(f"the daemon unloaded {instance}, which it did not load, unasked")

    def _check_duplicates(
        self, unloads: list[Any], decisions: dict[str, list[tuple[int, float]]]
    ) -> None:
        arrivals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for request in unloads:
            done = request.t_done if request.t_done is not None else float("inf")
            arrivals[str(request.body.get("instance_id"))].append((request.t, done))
        decided = {i: sorted(t for _, t in times) for i, times in decisions.items()}

        def leaving(instance: str, snapshot: Snapshot) -> bool:
            for arrived, done in arrivals.get(instance, ()):
                if arrived <= snapshot.after and done >= snapshot.before:
                    return True
            times = decided.get(instance, [])
            # A decision logged up to 5 ms after the list was read still counts (clock bridge).
            position = bisect.bisect_right(times, snapshot.after + 0.005)
            return position > 0 and times[position - 1] >= snapshot.before - 2.0

        for snapshot in self.snapshots:
            self.result.checks["instance snapshots"] += 1
            for key, instances in snapshot.instances.items():
                ours = [i for i, context in instances if context == DAEMON_CTX]
                staying = [i for i in ours if not leaving(i, snapshot)]
                if len(staying) > 1:
                    self.violate(
                        f"two daemon-loaded instances of {key} at once: {ours} "
                        f"(at t={snapshot.after:.3f})"
                    )

    def _rss_verdict(self) -> None:
        samples = self.result.rss_mib
        if len(samples) < 4:
            return
        events = self.plan.events
        early = [rss for index, rss in samples if 0.1 * events <= index <= 0.2 * events]
        late = [rss for index, rss in samples if index >= 0.9 * events]
        self.result.rss_start_mib = statistics.median(early or [samples[0][1]])
        self.result.rss_end_mib = statistics.median(late or [samples[-1][1]])
