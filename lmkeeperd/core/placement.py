"""Placement: which models to load and which residents to evict (pure, no state).

Shaped like httpcore's `_assign_requests_to_connections`: the caller hands in
what is wanted, the residents as they are and the limits, and gets back a
plan; it never changes anything itself. machine.py turns the plan into
actions (and decides the order: L4 unloads before it loads).

L25: while the residents plus a wanted model exceed `max_loaded` or the memory
budget, the least recently used idle resident is evicted (idle: no stream, not
busy for LM Studio, not loading or unloading, not pinned, not itself wanted).
If none is idle the wanted model waits (`blocked`) until one is, unless the
caller forces it (after `busy_switch_wait`), and then it loads without evicting
a busy model. Memory is counted as it is on the server, not as it will be: a
victim whose unload must wait for client streams to end (L7, `lingers`) and
instances of ours on their way out (`leaving`) hold their memory until they
are gone, so a load they would push past the budget waits for them too
(bounded the same way). A load that may still land (abandoned, L30) counts in
the budget but blocks nothing (L30: it "stops blocking"): nobody can tell
when, or whether, it lands, as LM Studio lists no load in progress. A model
that does not fit even alone is loaded anyway: the budget decides evictions,
never whether to load. Pinned models are never evicted and do not count
against `max_loaded`; they count in the budget (L28).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Seat:
    """A resident as placement sees it."""

    model: str
    last_use: float  # the least recently used idle resident goes first (L25)
    idle: bool  # loaded and in no use: no stream, not busy (L19), not loading or unloading
    estimate: float | None = None  # GB on the server, when known
    lingers: bool = False  # idle, but evicted it stays until client streams end (L7)


@dataclass(frozen=True, slots=True)
class Limits:
    max_loaded: int = 1  # residents at once, the one loading included
    budget: float | None = None  # GB the residents may take together; None: no budget
    pinned: frozenset[str] = frozenset()  # never evicted (L28)

    def __post_init__(self) -> None:
        if self.max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {self.max_loaded}")


@dataclass(frozen=True, slots=True)
class Placement:
    """What to do: evict these residents, load these models; `blocked` ones wait."""

    load: tuple[str, ...] = ()
    evict: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()


@dataclass(slots=True)
class _Room:
    seats: list[Seat]
    estimates: Mapping[str, float] = field(default_factory=dict)
    landing: list[Seat] = field(default_factory=list)
    leaving: list[Seat] = field(default_factory=list)

    def size(self, model: str) -> float:
        return self.estimates.get(model, 0.0)

    def seat_size(self, seat: Seat) -> float:
        return seat.estimate if seat.estimate is not None else self.size(seat.model)

    def used(self) -> float:
        return sum(self.seat_size(s) for s in self.seats + self.landing + self.leaving)

    def over(self, model: str, need: float, limits: Limits) -> bool:
        """Would `model` (`need` GB) exceed `max_loaded` or the budget beside these seats?

        Pinned models do not count against `max_loaded` (L28); they count in the budget."""
        counted = sum(1 for s in self.seats if s.model not in limits.pinned)
        if counted + (model not in limits.pinned) > limits.max_loaded:
            return True
        return limits.budget is not None and self.used() + need > limits.budget


def place(
    wanted: Sequence[str],
    residents: Sequence[Seat],
    limits: Limits,
    estimates: Mapping[str, float] | None = None,
    *,
    landing: Sequence[Seat] = (),
    leaving: Sequence[Seat] = (),
    force: bool = False,
) -> Placement:
    """The plan that brings every model of `wanted` (in order) onto the server (L24, L25).

    `estimates` gives GB per model for those not resident yet. `landing` (loads that may
    still land: abandoned, L30) and `leaving` (instances of ours whose unload is not done:
    L7, L20, L22) count in the budget only and are never evicted; a load `leaving` ones
    push past the budget waits for them. With `force` a model that would wait loads
    anyway (L25's bounded wait), without evicting a busy model.
    """
    room = _Room(list(residents), estimates or {}, list(landing), list(leaving))
    keep = set(wanted) | limits.pinned
    load: list[str] = []
    evict: list[str] = []
    blocked: list[str] = []
    for model in dict.fromkeys(wanted):  # each once, in order
        if any(s.model == model for s in room.seats):
            continue  # L24: resident already; nothing to load
        need = room.size(model)

        victims: list[Seat] = []
        while room.over(model, need, limits):
            idle = [s for s in room.seats if s.idle and s.model not in keep]
            if not idle:
                break
            victims.append(min(idle, key=lambda s: (s.last_use, s.model)))
            room.seats.remove(victims[-1])
        # Residents that would make room once idle, and memory that will be free once
        # what is on its way out is gone: the load waits for them (L25), and nothing is
        # evicted for a model that does not load yet.
        waiting = [s for s in room.seats if not s.idle and s.model not in keep]
        waiting += room.leaving
        lingering = sum(room.seat_size(s) for s in victims if s.lingers)
        over = room.over(model, need + lingering, limits)
        if over and (waiting or lingering) and not force:
            room.seats.extend(victims)
            blocked.append(model)
            continue
        evict.extend(s.model for s in victims)
        load.append(model)
        room.seats.append(Seat(model, float("inf"), idle=False, estimate=need))
    return Placement(tuple(load), tuple(evict), tuple(blocked))
