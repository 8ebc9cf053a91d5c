"""Chaos soak: the real daemon under a seeded random mix of events while the server misbehaves.

One driver thread plays a seeded random sequence of events against a real `lmkeeperd run`
process: selections, stream starts and ends from several client connections (some of which
hang up abruptly, with a TCP-style reset, streams still open), activity, engine changes, config
edits (valid and invalid), SIGHUP, `unload` commands, malformed requests and pauses that let
timers fire. Interleaved with them, the in-process emulator injects faults: slow loads, failed
loads, loads that outlast `load_timeout` (abandoned by the daemon, landing later), hung
unloads, server restarts (everything forgotten), and loads and unloads behind the daemon's
back; and the daemon itself crashes: `kill -9` at any moment, then a restart. The CI run
plays about 1,000 events ($LMKEEPERD_SOAK_EVENTS changes that); `bench/bench_soak.py` (or
`PYTHONPATH=tests python tests/daemon/test_e2e_soak.py --events 20000 [--seed N]`) plays the
same code with more.

Ground truth is what the soak itself did and saw (with `time.monotonic()` timestamps) and the
emulator's request log (arrival time of every request the daemon sent). The daemon's own debug
log is used only to *excuse* an observation, never to accuse the daemon (see invariant 1).

Invariants
----------
1. **No unload reaches the server while a stream is open.** A stream *protects* from the moment
   the soak received the reply to its `stream_start` (the daemon had registered it by then) to
   the moment the soak *began sending* its `stream_end`, closed its connection, or began sending
   an engine change away from LM Studio (lifecycle L13: the daemon then stops acting and
   forgets its streams), whichever came first. Until that moment the daemon cannot have seen the
   stream end, so an unload decided after it would be the daemon's fault; ending the window at
   the `stream_end` *reply* instead would blame the daemon for unloads it rightly decided after
   reading the `stream_end`, but whose request reached the server before the reply reached us.
   A stream started while the engine was not LM Studio never protects (L13 ignores it).
   An unload request that *arrives* inside a protecting window is a violation unless the daemon
   had already decided it before it registered the stream: such an unload was in flight (the
   daemon decides, then sends on a later turn of its loop), and a stream that starts meanwhile
   cannot recall it. That order is read from the daemon's debug log, which the daemon writes
   from its one event loop, in order: `unload_started` (the decision) before `stream_opened`
   (logged once the core has taken the stream; a debounce or idle deadline that fell due
   before the stream started is handled first, within the same step, and so counts as
   decided before it). Each arrival is matched to the decision for the same instance id, in
   order; a decision whose request never arrived (the server was down) can only make this
   match more lenient, never blame the daemon wrongly. Arrivals before the `stream_start`
   reply are fine by definition.
2. **Never two instances of a model that lmkeeperd loaded.** The daemon's loads carry
   `context_length` 2048 and the soak's loads behind its back 1111, so every instance's owner is
   known from its config. A checker thread reads the server's model list every few
   milliseconds; two daemon-loaded instances of one model at once are a violation unless one of
   them was on its way out: an unload request for it had reached the server and was not done
   when the list was read, or the daemon had logged the decision to unload it before the list
   was read (the log's wall-clock times are converted to the monotonic clock; the tolerance
   only excuses).
3. **No model lmkeeperd did not load is unloaded, except by an explicit `unload MODEL`.** Three
   models are *foreign*: the soak loads them behind the daemon's back and never selects them.
   Every unload request for one of them must arrive while an `unload` command naming that model
   is in progress (sent before the arrival, answered after it), or come from the daemon that
   started within 5 s after a `kill -9` that followed such a command (the journal held its
   unload: the next daemon finishes it, L22, never keeps it). Behind-the-back loads of the
   selectable models are adopted by the daemon when selected (L17) and from then on are its own,
   so they are not checked here.
4. **Once events stop and faults clear, the server holds exactly what the daemon's status
   says.** Faults are switched off, every client closes, the engine is LM Studio again; then,
   within a deadline, the status must become quiet (`idle` or `loaded`, nothing pending, no
   stream, server reachable) with `server.loaded` equal to the server's models and `model` (if
   any) loaded on the server. Daemon-loaded instances of any other model must not remain,
   unless the daemon let go of them on purpose when the engine moved away (L13).
5. **The daemon never exits** (checked on every tick of the checker and at the end), and it stops
   cleanly on SIGTERM at the end (exit status 0).
6. **RSS stays flat:** the growth from the early part of the run (10-20 % of the events) to its
   end is bounded (samples of whichever daemon process runs; crashes restart it).
7. **L22 at every quiet point.** Now and then (`quiet_point` events, and at the end) the soak
   makes a quiet point: faults off (hung unloads released, load delays gone), clients gone,
   engine back; once the daemon is quiet and nothing is in flight on the server, the server
   must hold, within a deadline, no daemon-loaded instance but one of the daemon's model
   (and those the daemon let go of on purpose at an engine change, L13), whatever crashes,
   abandoned loads and hung unloads came before. Judged on the emulator's real instances.
   With residency (below) "one of the daemon's model" is one of each model `status` lists
   as resident.

Residency
---------
The daemon runs with `max_loaded = 3`, one pinned model (also selectable) and a 10 GB
`[memory] budget`; LM Studio's load guardrail (refusals past a count or memory limit, L27)
is among the faults. A stream names the model `status` showed current just before it
started (L24): invariant 1 bars the unload of that model only, since an idle resident may
be evicted while another model streams (L25). Judged by soak_residency.py:

8. **Never two loads in flight (L30)**, from the emulator's log: a load arriving while
   another is unanswered is a violation unless the earlier one outlasted `load_timeout`
   (abandoned, L22) or a crash or server restart came between them.
9. **Never a pinned model unloaded unasked (L28)**: only during an `unload` command naming
   it (or the current model), or while a second instance of it was on the server (L22).
10. **The budget never exceeded by lmkeeperd's own choice (L25, L26)**: at every snapshot
   with no load or unload in flight, the catalog sizes (weights only, below any estimate,
   so this can only under-accuse) of the daemon-loaded instances stay within the budget,
   unless one of them is over it alone (loaded anyway, L25).
11. **Never more residents than allowed once nothing is in flight (L25)**: at every quiet
   point, at most `max_loaded` models besides the pinned one hold daemon-loaded instances.
12. **The pinned model is loaded at start (L28)**, within 10 s.
The second test (`--one-model` here) plays the same soak with residency off (`max_loaded`
1, nothing pinned, no budget, no guardrail): then 8 and 11 apply, 9, 10 and 12 do not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import psutil
import pytest
from daemon_harness import DaemonProc
from residency_harness import render_tables
from soak_records import (
    BEHIND_CTX,
    BUDGET_GB,
    CI_EVENTS,
    CI_RSS_GROWTH_MIB,
    CLIENTS,
    DAEMON_CTX,
    DEFAULT_SEED,
    FOREIGN,
    LOAD_TIMEOUT_S,
    MAX_LOADED,
    MAX_STREAMS_PER_CLIENT,
    OUTAGE_MAX_S,
    PINNED,
    REPLY_TIMEOUT_S,
    SELECTABLE,
    UNKNOWN,
    WEIGHTS,
    Command,
    LineClient,
    Snapshot,
    SoakPlan,
    SoakResult,
    StreamRecord,
)
from soak_residency import ResidencyWatch
from soak_watch import SoakWatch

from lmkeeperd.control.client import request as control_request
from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import LmkeeperError


class SoakDaemon(DaemonProc):
    """The daemon, its config written with TOML arrays (`pinned`)."""

    def write_config(self, text: str | None = None) -> None:
        super().write_config(render_tables(self.tables) if text is None else text)


class Soak(SoakWatch, ResidencyWatch):
    """Runs one soak (see the module docstring); `run()` returns the result."""

    def __init__(self, plan: SoakPlan, emulator: Emulator) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.emu = emulator
        self.result = SoakResult(plan)
        residency: dict[str, Any] = {
            "max_loaded": MAX_LOADED,
            "pinned": [PINNED],
            "switch": "auto",
        }
        self.daemon = SoakDaemon(
            emulator.url,
            server={
                "reconcile_interval": "250ms",
                "request_timeout": "1s",
                "load_timeout": f"{LOAD_TIMEOUT_S}s",
            },
            model={
                "switch_debounce": "20ms",
                "idle_timeout": "400ms",
                "selected": "",
                **(residency if plan.residency else {}),
            },
            memory={"budget": f"{BUDGET_GB:g}GB"} if plan.residency else {},
            model_load={"context_length": DAEMON_CTX},
            log={"format": "json", "level": "debug"},
        )
        self.clients: list[LineClient | None] = [None] * CLIENTS
        self.streams: dict[tuple[int, int], StreamRecord] = {}  # (generation, stream) ->
        self.generation = 0
        self.crashing = threading.Event()
        self.process: psutil.Process | None = None
        self.listeners: list[threading.Thread] = []
        self.commands: list[Command] = []
        self.command_futures: list[Future[None]] = []
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="soak-unload")
        self.hands_on = True
        self.engine_back_after = 0
        self.hang_until = 0
        self.guard_until = 0
        self.crashes: list[float] = []  # when the soak killed the daemon
        self.outages: list[float] = []  # when the server went down
        self.released: set[str] = set()  # models the daemon let go of at an engine change
        self.let_go: list[tuple[float, str]] = []  # (when, model) for each of them
        self.snapshots: list[Snapshot] = []
        self.stop = threading.Event()
        self.http = httpx.Client(base_url=emulator.url, timeout=5.0)
        self._lock = threading.Lock()
        self._event_index = 0

    # --- life -------------------------------------------------------------------------

    def run(self) -> SoakResult:
        started = time.monotonic()
        threads: list[threading.Thread] = []
        try:
            self.daemon.start()
            assert self.daemon.proc is not None
            self.process = psutil.Process(self.daemon.proc.pid)
            self._pinned_at_start()
            threads = [threading.Thread(target=self._check_loop, daemon=True)]
            threads[0].start()
            self._start_listener()
            self._drive()
            self._settle()
        finally:
            self.stop.set()
            for thread in [*threads, *self.listeners]:
                thread.join(10)
            self.pool.shutdown(wait=True, cancel_futures=True)
            for client in self.clients:
                if client is not None:
                    client.close()
            self.http.close()
            self._finish()
            self.daemon.cleanup()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _finish(self) -> None:
        proc = self.daemon.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                self.result.exit_code = proc.wait(15)
            except subprocess.TimeoutExpired:
                self.violate("the daemon did not stop within 15 s of SIGTERM")
        elif proc is not None:
            self.result.exit_code = proc.returncode
        if self.result.exit_code != 0:
            self.violate(f"the daemon exited with status {self.result.exit_code}")
        self._check_log()
        self._rss_verdict()

    def violate(self, message: str) -> None:
        with self._lock:
            if len(self.result.violations) < 50:
                self.result.violations.append(message)

    # --- the driver ---------------------------------------------------------------------

    def _drive(self) -> None:
        names = [n for n in WEIGHTS if self.plan.residency or n != "fault_guardrail"]
        weights = [WEIGHTS[n] for n in names]
        for index in range(self.plan.events):
            self._event_index = index
            if self.daemon.proc is not None and self.daemon.proc.poll() is not None:
                self.violate(f"the daemon exited (status {self.daemon.proc.returncode})")
                return
            if not self.hands_on and index >= self.engine_back_after:
                name = "engine_back"
            elif self.hang_until and index >= self.hang_until:
                name = "fault_hang_off"
            elif self.guard_until and index >= self.guard_until:
                name = "fault_guardrail_off"
            else:
                name = self.rng.choices(names, weights)[0]
            self.result.events[name] += 1
            try:
                getattr(self, f"_do_{name}")()
            except (OSError, ConnectionError, LmkeeperError) as e:
                self.violate(f"event {index} ({name}): the daemon did not answer: {e!r}")
                return
            time.sleep(min(0.05, self.rng.expovariate(1 / self.plan.mean_gap_s)))

    def _client(self) -> tuple[int, LineClient]:
        number = self.rng.randrange(CLIENTS)
        client = self.clients[number]
        if client is None:
            client = self.clients[number] = LineClient(self.daemon.socket)
        return number, client

    def _expect_ok(self, what: str, reply: dict[str, Any]) -> None:
        if reply.get("ok") is not True:
            self.violate(f"{what} was refused: {reply}")

    def _do_select(self) -> None:
        model = UNKNOWN if self.rng.random() < 0.03 else self.rng.choice(SELECTABLE)
        _, client = self._client()
        reply = client.ask({"op": "select", "model": model})[0]
        if model != UNKNOWN:
            self._expect_ok("select", reply)
        elif reply.get("ok") is not False and reply.get("unchecked") is not True:
            # L23: refused at once, or accepted unchecked while the server is away.
            self.violate(f"select of an unknown key was not refused: {reply}")

    def _do_stream_start(self) -> None:
        number, client = self._client()
        if len(client.streams) >= MAX_STREAMS_PER_CLIENT:
            self._do_stream_end()
            return
        current = client.ask({"op": "status"})[0].get("status", {}).get("model")
        request = (
            {"op": "stream_start"} if current is None else {"op": "stream_start", "model": current}
        )
        reply, _, acked = client.ask(request)
        self._expect_ok("stream_start", reply)
        stream = int(reply["stream"])
        client.streams.append(stream)
        self.streams[(self.generation, stream)] = StreamRecord(
            stream, number, acked, self.hands_on, self.generation, model=current
        )

    def _do_stream_end(self) -> None:
        open_clients = [i for i, c in enumerate(self.clients) if c is not None and c.streams]
        if not open_clients:
            self._do_activity()
            return
        client = self.clients[self.rng.choice(open_clients)]
        assert client is not None
        if self.rng.random() < 0.5:
            stream = client.streams.pop(self.rng.randrange(len(client.streams)))
            request: dict[str, Any] = {"op": "stream_end", "stream": stream}
        else:
            stream = client.streams.pop()  # the newest: what stream_end without an id ends
            request = {"op": "stream_end"}
        self._end_protection(stream, time.monotonic())
        self._expect_ok("stream_end", client.ask(request)[0])

    def _end_protection(self, stream: int, when: float) -> None:
        record = self.streams[(self.generation, stream)]
        record.until = min(record.until, when)

    def _do_disconnect(self) -> None:
        number = self.rng.randrange(CLIENTS)
        client = self.clients[number]
        if client is None:
            return
        now = time.monotonic()
        for stream in client.streams:
            self._end_protection(stream, now)
        client.close(abrupt=self.rng.random() < 0.5)
        self.clients[number] = None

    def _do_activity(self) -> None:
        _, client = self._client()
        self._expect_ok("activity", client.ask({"op": "activity"})[0])

    def _do_status(self) -> None:
        _, client = self._client()
        reply = client.ask({"op": "status"})[0]
        self._expect_ok("status", reply)
        status = reply.get("status", {})
        if status.get("state") not in ("idle", "loading", "loaded", "streaming", "unloading"):
            self.violate(f"status has no valid state: {status}")

    def _do_engine_away(self) -> None:
        if not self.hands_on:
            return
        _, client = self._client()
        sent = time.monotonic()
        self.hands_on = False
        for record in self.streams.values():
            record.until = min(record.until, sent)
        self.engine_back_after = self._event_index + self.rng.randint(5, 40)
        # What the daemon has (or is loading) now stays on the server, on purpose (L13).
        status = client.ask({"op": "status"})[0].get("status", {})
        held = [status.get("model")] + [r.get("model") for r in status.get("resident") or []]
        self.released.update(str(m) for m in held if m)
        self.let_go += [(sent, str(m)) for m in held if m]
        self._expect_ok("engine", client.ask({"op": "engine", "name": "ollama"})[0])

    def _do_engine_back(self) -> None:
        _, client = self._client()
        self._expect_ok("engine", client.ask({"op": "engine", "name": "lmstudio"})[0])
        self.hands_on = True

    def _do_config_valid(self) -> None:
        model = self.daemon.tables["model"]
        choice = self.rng.random()
        if choice < 0.5:
            model["selected"] = self.rng.choice([*SELECTABLE, ""])
        elif choice < 0.75:
            model["idle_timeout"] = self.rng.choice(["0", "250ms", "400ms", "1s", "30m"])
        else:
            model["switch_debounce"] = self.rng.choice(["0", "20ms", "80ms"])
        self.daemon.write_config()

    def _do_config_invalid(self) -> None:
        broken = self.rng.choice(
            [
                "[model\nselected = ",
                '[model]\nidle_timeout = "five minutes"\n',
                "[model]\nauto_load = 3\n",
                '[modle]\nselected = "x"\n',
                '[model]\nswitch_debounce = "-1s"\n',
                "[server]\nurl = 12\n",
                '[model]\nselected = "\u00e9\u6f22\u5b57"\nidle_timeuot = "1s"\n',
                "\x00\x01 not toml at all",
            ]
        )
        self.daemon.write_config(broken)
        # The next valid edit writes the whole (valid) table set again.

    def _do_sighup(self) -> None:
        self.daemon.signal(signal.SIGHUP)

    def _do_unload_command(self) -> None:
        pending = [f for f in self.command_futures if not f.done()]
        if len(pending) >= 2:
            self._do_activity()
            return
        roll = self.rng.random()
        model = (
            None
            if roll < 0.4
            else self.rng.choice(FOREIGN)
            if roll < 0.7
            else self.rng.choice(SELECTABLE)
        )
        command = Command(model, time.monotonic())
        self.commands.append(command)
        self.command_futures = [*pending, self.pool.submit(self._unload_command, command)]

    def _unload_command(self, command: Command) -> None:
        request: dict[str, Any] = {"op": "unload"}
        if command.model is not None:
            request["model"] = command.model
        command.sent = time.monotonic()
        try:
            command.reply = control_request(self.daemon.socket, request, timeout=REPLY_TIMEOUT_S)
        except LmkeeperError as e:
            self.violate(f"unload {command.model} got no answer: {e}")
        command.replied = time.monotonic()

    def _do_bad_request(self) -> None:
        _, client = self._client()
        bad: dict[str, Any] = self.rng.choice(
            [
                {"op": "bogus"},
                {"op": "select", "model": 7},
                {"op": "stream_end", "stream": 10**12},
                {"model": "x"},
            ]
        )
        reply = client.ask(bad)[0]
        if reply.get("ok") is not False or not reply.get("error"):
            self.violate(f"{bad} was answered with {reply}")

    def _do_fault_load_delay(self) -> None:
        self.emu.set_load_delay(self.rng.choice([0.0, 0.0, 0.02, 0.1, 0.4]))

    def _do_fault_fail_loads(self) -> None:
        self.emu.fail_next_loads(self.rng.randint(1, 2))

    def _do_fault_hang_unloads(self) -> None:
        if not self.hang_until:
            self.emu.hang_unloads(True)
            self.hang_until = self._event_index + self.rng.randint(5, 40)

    def _do_fault_hang_off(self) -> None:
        self.emu.hang_unloads(False)
        self.hang_until = 0

    def _do_fault_guardrail(self) -> None:
        if not self.guard_until:
            if self.rng.random() < 0.5:
                self.emu.set_guardrail(max_models=self.rng.randint(1, 3))
            else:
                self.emu.set_guardrail(memory_gb=self.rng.choice([6.0, 10.0, 15.0]))
            self.guard_until = self._event_index + self.rng.randint(5, 40)

    def _do_fault_guardrail_off(self) -> None:
        self.emu.set_guardrail()
        self.guard_until = 0

    def _do_fault_restart(self) -> None:
        if self.emu.phase == "up":
            self.outages.append(time.monotonic())
            self.emu.go_down_for(self.rng.uniform(0.02, OUTAGE_MAX_S), forget=True)

    def _do_load_behind(self) -> None:
        pool = FOREIGN if self.rng.random() < 0.7 else SELECTABLE
        with contextlib.suppress(LookupError, ValueError, RuntimeError):
            self.emu.load_behind(self.rng.choice(pool), {"context_length": BEHIND_CTX})

    def _do_unload_behind(self) -> None:
        loaded = [i for instances in self.emu.loaded().values() for i in instances]
        if loaded:
            with contextlib.suppress(LookupError):
                self.emu.unload_behind(self.rng.choice(loaded))

    def _do_pause(self) -> None:
        time.sleep(self.rng.uniform(0.05, 0.5))  # timers (debounce, idle) get their turn

    def _do_fault_load_timeout(self) -> None:
        # The daemon gives up at LOAD_TIMEOUT_S; the server finishes the load later (L22).
        self.emu.set_load_delay(self.rng.uniform(1.2, 1.8) * LOAD_TIMEOUT_S)

    def _do_fault_crash(self) -> None:
        """`kill -9` the daemon, wherever it is, and start it again (L22 across a crash)."""
        for future in self.command_futures:  # their replies would be lost with the process
            future.result(timeout=60)
        self.crashing.set()
        try:
            now = time.monotonic()
            self._close_clients(now)
            proc = self.daemon.proc
            assert proc is not None
            self.crashes.append(time.monotonic())
            proc.send_signal(signal.SIGKILL)
            proc.wait(15)
            self.generation += 1
            self.hands_on = True  # a new daemon starts with LM Studio as its engine
            self.daemon.write_config()  # an invalid config edit would stop it starting at all
            self.daemon.start()
            assert self.daemon.proc is not None
            self.process = psutil.Process(self.daemon.proc.pid)
        finally:
            self.crashing.clear()
        self._start_listener()

    def _close_clients(self, now: float) -> None:
        for number, client in enumerate(self.clients):
            if client is not None:
                for stream in client.streams:
                    self._end_protection(stream, now)
                client.close()
                self.clients[number] = None

    def _do_quiet_point(self) -> None:
        self._quiet()


def run_soak(plan: SoakPlan) -> SoakResult:
    with Emulator() as emulator:
        return Soak(plan, emulator).run()


pytestmark = pytest.mark.e2e


def _judge(residency: bool) -> None:
    events = int(os.environ.get("LMKEEPERD_SOAK_EVENTS", CI_EVENTS))
    result = run_soak(SoakPlan(events=events, residency=residency))
    summary = json.dumps(result.summary(), indent=1)
    assert not result.violations, summary
    assert result.exit_code == 0, summary
    assert result.rss_growth_mib <= CI_RSS_GROWTH_MIB, summary
    # The run must have exercised what it claims to check.
    assert result.checks["unload vs streams"] > 0, summary
    assert result.checks["final agreement"] == 1, summary
    assert result.checks["L22 quiet points"] > 0, summary
    assert result.checks["loads (L30)"] > 0, summary
    assert result.events["fault_crash"] > 0, summary
    assert result.events["fault_load_timeout"] > 0, summary
    assert result.daemon_events["load_finished"] > 0, summary
    assert result.daemon_events["unloaded"] > 0, summary
    if residency:
        assert result.events["fault_guardrail"] > 0, summary
        assert result.checks["budget snapshots"] > 0, summary


def test_chaos_soak_keeps_every_invariant() -> None:
    """max_loaded 3, a pinned model, a budget, guardrail refusals (invariants 1-11)."""
    _judge(residency=True)


def test_chaos_soak_one_model_at_a_time_keeps_every_invariant() -> None:
    """Residency off (`--one-model`): invariants 1-8 and 11 with max_loaded 1."""
    _judge(residency=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the chaos soak and print its summary.")
    parser.add_argument("--events", type=int, default=CI_EVENTS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--one-model", action="store_true", help="residency off")
    args = parser.parse_args(argv)
    plan = SoakPlan(events=args.events, seed=args.seed, residency=not args.one_model)
    result = run_soak(plan)
    print(json.dumps(result.summary(), indent=1))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
