"""Pure decisions the daemon's I/O edges ask for: no I/O, no clock, no tasks.

Three questions are answered here, from what the caller already knows:

- `adopt_or_load`: a load is about to start and the server was just listed.
  Adopt an instance of the model that is already there (L17: lmkeeperd never
  loads a second instance of a model), load it, or give up because the server
  does not have the model at all.
- `proxy_verdict`: a proxied request names a model. Let it through as it is,
  let it through because that model is the loaded one, or switch to it first
  (select-on-request, lmkeeperd/proxy/switching.py).
- `check_selection`: a selection (socket, config file, restored at start) is
  about to be handed to the core. L23: a key the server's catalog does not list
  is refused before anything is unloaded; without a catalog it is accepted and
  checked once the server answers again.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from lmkeeperd.core.phases import State
from lmkeeperd.core.view import LMSTUDIO, CoreView


@dataclass(frozen=True, slots=True)
class Adopt:
    """Use this instance, already loaded on the server."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class Load:
    """Ask the server for a new instance."""


@dataclass(frozen=True, slots=True)
class Missing:
    """The server does not have the model: the load fails with this message."""

    message: str


LoadPlan = Adopt | Load | Missing


def adopt_or_load(
    model: str,
    instances: Sequence[str] | None,
    avoid: Collection[str],
    *,
    server: str,
) -> LoadPlan:
    """What to do for a load of `model`.

    `instances` are the ids of its loaded instances in the server's listing, or
    None when the listing does not have the model. `avoid` are instances the
    core is unloading (a stray, a superseded load): adopting one would hand the
    user a model that is about to go. `server` names the server in the message.
    """
    if instances is None:
        return Missing(
            f"model {model!r} is not downloaded on the LM Studio server at {server} (see `lms ls`)"
        )
    for instance in instances:
        if instance not in avoid:
            return Adopt(instance)
    return Load()


class Verdict(enum.Enum):
    READY = "ready"  # loaded by lmkeeperd: requests for it may go
    PASS = "pass"  # not lmkeeperd's to switch to: forward as is
    SWITCH = "switch"  # select it and wait until it is loaded


def proxy_verdict(core: CoreView, model: str, model_type: str | None) -> Verdict:
    """The verdict for a request naming `model`.

    `model_type` is the type the server lists for it ("llm", "embedding", ...),
    None when the server does not list it (or has not been listed yet): then
    LM Studio answers the request for itself.
    """
    if (
        model_type is None
        or model_type.startswith("embedding")  # served beside the chat model, never instead
        or core.engine != LMSTUDIO
        or core.stopped
        or not core.settings.auto_load
    ):
        return Verdict.PASS
    if core.model == model and core.state in (State.LOADED, State.STREAMING):
        return Verdict.READY
    return Verdict.SWITCH


# --- L23: selections are checked against the server's catalog ------------------------

NEAREST_KEYS = 3


@dataclass(frozen=True, slots=True)
class KnownKey:
    """The catalog lists the key: the selection goes to the core."""


@dataclass(frozen=True, slots=True)
class UncheckedKey:
    """No catalog to check against (the server cannot be listed): accepted, checked later."""


@dataclass(frozen=True, slots=True)
class UnknownKey:
    """The catalog does not list the key: refused; nothing is unloaded or stored."""

    model: str
    nearest: tuple[str, ...]

    @property
    def message(self) -> str:
        hint = f"; did you mean {', '.join(self.nearest)}?" if self.nearest else ""
        return f"model {self.model!r} is not in the LM Studio server's catalog{hint}"


SelectionCheck = KnownKey | UncheckedKey | UnknownKey


def check_selection(model: str, catalog: Collection[str] | None) -> SelectionCheck:
    """L23: may `model` be selected? `catalog` is every key the server lists, None if unknown.

    The nearest keys (`nearest_keys`) go with a refusal so that a typo costs one more try,
    not the working model.
    """
    if catalog is None:
        return UncheckedKey()
    key = model.strip()
    if key in catalog:
        return KnownKey()
    return UnknownKey(key, nearest_keys(key, catalog))


def nearest_keys(key: str, catalog: Collection[str], n: int = NEAREST_KEYS) -> tuple[str, ...]:
    """The catalog's keys closest to `key`, closest first, case-insensitive, at most `n`.

    Closest: the most of what was typed found in the key, in order (`qwen/qwen3-4b` is all
    in `qwen/qwen3-4b-2507`, one character short of `qwen/qwen3-32b`), then difflib's
    similarity, then the key itself, so that equal scores keep one order. A key is offered
    when it is similar (ratio 0.5 or more) or holds all of what was typed (3 characters or
    more).
    """
    typed = key.strip().lower()
    scored = []
    for candidate in catalog:
        matcher = difflib.SequenceMatcher(None, typed, candidate.lower())
        found = sum(block.size for block in matcher.get_matching_blocks())
        coverage = found / len(typed) if typed else 0.0
        ratio = matcher.ratio()
        if ratio < 0.5 and not (coverage == 1.0 and len(typed) >= 3):
            continue
        scored.append((-coverage, -ratio, candidate))
    return tuple(candidate for *_, candidate in sorted(scored)[:n])
