"""The chaos soak's residency invariants (L24-L28, L30), judged after the run and at quiet
points (tests/daemon/test_e2e_soak.py's docstring lists them as invariants 8-11).

`ResidencyWatch` is a mixin of `Soak`, beside `SoakWatch`; it reads the soak's records
(`crashes`, `outages`, `commands`, `snapshots`) and the emulator's request log.
"""

from __future__ import annotations

from typing import Any

from soak_records import (
    BUDGET_GB,
    DAEMON_CTX,
    LOAD_PATH,
    LOAD_TIMEOUT_S,
    MAX_LOADED,
    OUTAGE_MAX_S,
    PINNED,
    UNLOAD_PATH,
    Snapshot,
    _instance_key,
)

from lmkeeperd.emulator import default_catalog

GB = 1e9


class ResidencyWatch:
    def _pinned_at_start(self) -> None:
        """12. The pinned model is loaded at start (L28)."""
        if not self.plan.residency:
            return
        try:
            self.emu.wait_until(lambda: PINNED in self.emu.loaded(), timeout=10)
            self.result.checks["pinned loaded at start"] += 1
        except TimeoutError:
            self.violate(f"L28: the pinned model {PINNED} was not loaded within 10 s of start")

    # --- after the run ----------------------------------------------------------------------

    def _check_residency(self, requests: list[Any]) -> None:
        self._check_one_load(requests)
        if not self.plan.residency:
            return
        unloads = [r for r in requests if r.path == UNLOAD_PATH and isinstance(r.body, dict)]
        self._check_pinned(unloads)
        self._check_budget(requests)

    def _between(self, times: list[float], start: float, end: float) -> bool:
        return any(start <= t <= end for t in times)

    def _check_one_load(self, requests: list[Any]) -> None:
        """8. Never two loads in flight (L30), but for a load the daemon abandoned after
        `load_timeout` (L22), or one cut off by a crash or a server restart."""
        loads = sorted((r for r in requests if r.path == LOAD_PATH), key=lambda r: r.t)
        for i, first in enumerate(loads):
            end = first.t_done if first.t_done is not None else float("inf")
            for second in loads[i + 1 :]:
                if second.t >= end:
                    break
                self.result.checks["overlapping loads"] += 1
                abandoned = second.t >= first.t + 0.9 * LOAD_TIMEOUT_S
                if abandoned or self._between(self.crashes + self.outages, first.t, second.t):
                    self.result.checks["overlapping loads (excused)"] += 1
                    continue
                self.violate(
                    f"L30: two loads in flight: {first.body} at t={first.t:.3f} (answered "
                    f"{first.status} at {end:.3f}) and {second.body} at t={second.t:.3f}"
                )
        self.result.checks["loads (L30)"] += len(loads)

    def _check_pinned(self, unloads: list[Any]) -> None:
        """9. A pinned model is never unloaded unasked (L28): only by an `unload` command
        (naming it, or the current model), or as a second instance (L22)."""
        by_command = {
            str(e.get("instance_id"))
            for e in self.daemon.log_events()
            if e.get("event") == "unload_started" and e.get("reason") == "command"
        }
        for request in unloads:
            instance = str(request.body.get("instance_id"))
            if _instance_key(instance) != PINNED or request.status == 404:
                continue  # another model's, or it found no such instance: nothing went
            self.result.checks["pinned unloads"] += 1
            # A command's unload may reach the server after its reply: the daemon's log
            # (which only excuses) says when an unload was the command's.
            asked = any(
                c.model in (PINNED, None)
                and c.sent <= request.t
                and (
                    request.t <= c.replied or (request.t - c.sent < 5.0 and instance in by_command)
                )
                for c in self.commands
            )
            doubled = any(
                len(s.instances.get(PINNED, ())) > 1
                for s in self.snapshots
                if request.t - 2.0 <= s.after <= request.t
            )
            if not (asked or doubled or PINNED in self.released):
                self.violate(
                    f"L28: the pinned model's instance {instance} was unloaded unasked "
                    f"(arrived t={request.t:.3f}, answered {request.status})"
                )

    def _sizes(self) -> dict[str, int]:
        return {m.key: m.size_bytes for m in default_catalog()}  # the soak's emulator's

    def _check_budget(self, requests: list[Any]) -> None:
        """10. lmkeeperd's own loads never exceed the budget (L25, L26): judged on weights
        alone (the catalog's sizes, less than any estimate), so it can only under-accuse;
        only when no load or unload is in flight and the server is up, and not where one
        model of its own is over the budget by itself (loaded anyway with the advisory,
        L25). A model the daemon let go of when the engine moved away (L13) is no longer
        its own, until the daemon asks LM Studio to load it again (and adopts it). A load
        the daemon abandoned after `load_timeout` blocks nothing (L30) and may land beside
        later ones: its model is not judged from its landing until an unload of it is
        done (L22 collects it once it is not in use)."""
        sizes, downs = self._sizes(), self.outages
        busy = [
            (r.t, r.t_done if r.t_done is not None else float("inf"))
            for r in requests
            if r.path in (LOAD_PATH, UNLOAD_PATH)
        ]
        loads = [
            (r.t, r.body.get("model"))
            for r in requests
            if r.path == LOAD_PATH and isinstance(r.body, dict)
        ]
        landed = [
            (r.t_done if r.t_done is not None else r.t + LOAD_TIMEOUT_S, r.body.get("model"))
            for r in requests
            if r.path == LOAD_PATH
            and isinstance(r.body, dict)
            and (r.t_done is None or r.t_done - r.t > LOAD_TIMEOUT_S)
        ]
        unloaded = [
            (r.t_done, _instance_key(str(r.body.get("instance_id"))))
            for r in requests
            if r.path == UNLOAD_PATH and isinstance(r.body, dict) and r.t_done is not None
        ]
        for snapshot in self.snapshots:
            now = snapshot.after
            gone = {
                model
                for t, model in self.let_go
                if t <= now and not any(t <= at <= now and m == model for at, m in loads)
            }
            gone |= {
                model
                for t, model in landed
                if t <= now and not any(t <= at <= now and m == model for at, m in unloaded)
            }
            ours = [
                k
                for k, inst in snapshot.instances.items()
                for _, c in inst
                if c == DAEMON_CTX and k not in gone
            ]
            if any(sizes.get(k, 0) > BUDGET_GB * GB for k in ours):
                continue
            if any(start <= snapshot.after and end >= snapshot.before for start, end in busy):
                continue
            # A server that is down still lists what it forgets when it is back: the
            # daemon can unload nothing meanwhile.
            if any(o <= snapshot.after and snapshot.before <= o + OUTAGE_MAX_S for o in downs):
                continue
            self.result.checks["budget snapshots"] += 1
            total = sum(sizes.get(k, 0) for k in ours)
            if total > BUDGET_GB * GB:
                self.violate(
                    f"budget: lmkeeperd's instances weigh {total / GB:.2f} GB > {BUDGET_GB} GB "
                    f"with nothing in flight: {sorted(ours)} (at t={snapshot.after:.3f})"
                )

    # --- at quiet points ----------------------------------------------------------------------

    def _residents_allowed(self, status: dict[str, Any]) -> set[str]:
        """The models whose one daemon-loaded instance L22 allows: status' residents."""
        allowed = {str(r["model"]) for r in status.get("resident") or []}
        if status.get("model"):
            allowed.add(str(status["model"]))
        return allowed

    def _too_many(self, snapshot: Snapshot) -> str | None:
        """11. Never more residents than allowed once nothing is in flight (L25, L28)."""
        ours = {
            k
            for k, inst in snapshot.instances.items()
            if k not in self.released and any(c == DAEMON_CTX for _, c in inst)
        }
        limit = MAX_LOADED if self.plan.residency else 1
        selected = ours - {PINNED} if self.plan.residency else ours
        if len(selected) > limit:
            return f"{len(selected)} resident besides the pinned one, max_loaded {limit}"
        return None
