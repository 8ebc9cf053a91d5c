"""What the emulated LM Studio holds: loaded instances, fault settings, the request log.

Theory of operation
-------------------
One `threading.Condition` guards everything here. Anything that takes time (a
load delay, a hung unload, the pause between streamed chunks) waits on that
condition, which releases the lock, so other requests proceed meanwhile; every
change notifies it, so waiters re-check their reason to wait at once. That is
what makes fault controls "effective immediately": lowering a load delay
releases loads already waiting on it, turning hang_unloads off releases hung
unloads.

A server that goes down (or stops) loses whatever it was doing. `interrupt()`
bumps the *generation*; each request remembers the generation it started in,
and a wait or a commit in an older generation raises `Interrupted` instead of
touching the state, so a load begun before a restart never lands after it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lmkeeperd.emulator.catalog import CatalogModel

ERROR_STYLES = ("object", "string")
DEFAULT_LOG_LIMIT = 100_000

# LM Studio's defaults for a load that does not set them.
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_EVAL_BATCH_SIZE = 512
DEFAULT_PARALLEL = 4
# A JIT-loaded model's idle TTL when the request names none (ttl-and-auto-evict.md).
DEFAULT_JIT_TTL = 3600.0

_INT_OPTIONS = ("context_length", "eval_batch_size", "num_experts")
_BOOL_OPTIONS = ("flash_attention", "offload_kv_cache_to_gpu")
LOAD_OPTIONS = _INT_OPTIONS + _BOOL_OPTIONS
# Every key `POST /api/v1/models/load` accepts (lmstudio-real.md): no `ttl`, no `parallel`.
LOAD_KEYS = ("model", *LOAD_OPTIONS, "echo_load_config")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the emulator received (control requests excluded).

    `t` is `time.monotonic()` when the request arrived; `status` is 0 while no
    answer has been sent yet (an unload still hanging, a load still waiting);
    `t_done` is when the answer was complete, set just before its last bytes
    are written (so a client holding the whole answer always sees it set), or
    when the emulator gave up on the request; None while in flight.
    """

    t: float
    method: str
    path: str
    body: Any
    status: int
    authorized: bool
    t_done: float | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The switches a request reads once when it arrives."""

    token: str | None
    v0_only: bool
    jit: bool
    stream_interval: float
    stream_chunks: int
    error_style: str
    auto_evict: bool = True
    # Answer loads with `model_instance_id`, as LM Studio did before 0.4.0.
    legacy_load_answer: bool = False

    def __repr__(self) -> str:
        # The token never appears in a repr.
        return (
            f"Settings(token_set={self.token is not None}, v0_only={self.v0_only}, "
            f"jit={self.jit}, stream_interval={self.stream_interval}, "
            f"stream_chunks={self.stream_chunks}, error_style={self.error_style!r}, "
            f"auto_evict={self.auto_evict}, legacy_load_answer={self.legacy_load_answer})"
        )


@dataclass(frozen=True, slots=True)
class LoadDone:
    model: CatalogModel
    instance_id: str
    seconds: float
    echo_config: Mapping[str, Any]


class NoSuchModel(LookupError):
    """The catalog has no model by that key."""


class NoSuchInstance(LookupError):
    """No loaded instance has that id."""


class NotLoaded(LookupError):
    """An inference request named a model that is downloaded but not loaded."""


class InjectedLoadFailure(Exception):
    """A load failed because `fail_next_loads` said so."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class Interrupted(Exception):
    """The server went down or stopped while this request was being served."""


class _Instance:
    __slots__ = ("busy", "config", "id", "jit", "last_used", "ttl")

    def __init__(
        self, instance_id: str, config: dict[str, Any], jit: bool, ttl: float | None, now: float
    ) -> None:
        self.id = instance_id
        self.config = config
        self.jit = jit
        # Idle TTL in seconds (JIT loads only); the idle timer runs from `last_used`
        # while no request is using the instance (`busy` counts those that are).
        self.ttl = ttl
        self.last_used = now
        self.busy = 0

    def expired(self, now: float) -> bool:
        return self.ttl is not None and self.busy == 0 and now - self.last_used >= self.ttl


class _LogEntry:
    __slots__ = ("authorized", "body", "method", "path", "status", "t", "t_done")

    def __init__(self, t: float, method: str, path: str, body: Any, authorized: bool) -> None:
        self.t = t
        self.method = method
        self.path = path
        self.body = body
        self.authorized = authorized
        self.status = 0
        self.t_done: float | None = None

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            self.t, self.method, self.path, self.body, self.status, self.authorized, self.t_done
        )


def build_load_config(
    model: CatalogModel, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate load options; return (instance config, config to echo back).

    Raises ValueError naming the bad option. A context length above the
    model's maximum is clamped to it, as LM Studio's load dialog does.
    """
    for name in _INT_OPTIONS:
        value = options.get(name)
        if name in options and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"'{name}' must be a positive integer")
    for name in _BOOL_OPTIONS:
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"'{name}' must be a boolean")
    context = options.get("context_length", min(DEFAULT_CONTEXT_LENGTH, model.max_context_length))
    config: dict[str, Any] = {
        "context_length": min(context, model.max_context_length),
        "eval_batch_size": options.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE),
        "parallel": DEFAULT_PARALLEL,
        "flash_attention": options.get("flash_attention", True),
        "offload_kv_cache_to_gpu": options.get("offload_kv_cache_to_gpu", True),
    }
    echo = dict(config)
    if "num_experts" in options:
        echo["num_experts"] = options["num_experts"]
    return config, echo


class EmulatorState:
    """Models, instances, fault switches and the request log, behind one lock."""

    def __init__(
        self,
        models: Iterable[CatalogModel],
        *,
        token: str | None,
        v0_only: bool,
        jit: bool,
        stream_interval: float,
        stream_chunks: int,
        error_style: str,
        log_limit: int = DEFAULT_LOG_LIMIT,
    ) -> None:
        self._cond = threading.Condition()
        self._models: dict[str, CatalogModel] = {}
        for model in models:
            if model.key in self._models:
                raise ValueError(f"model key {model.key!r} appears twice in the catalog")
            self._models[model.key] = model
        self._instances: dict[str, list[_Instance]] = {}
        self._generation = 0
        self._closed = False
        self._changes = 0
        self._default_delay = 0.0
        self._model_delays: dict[str, float] = {}
        self._fail_remaining = 0
        self._fail_message = ""
        self._fail_status = 500
        self._hang_unloads = False
        # The TTL clock: monotonic time plus what advance_clock() added, so a test can
        # expire an idle JIT model without waiting an hour.
        self._clock_offset = 0.0
        self._settings = Settings(token, v0_only, jit, 0.0, 1, "object")
        self.update_settings(
            stream_interval=stream_interval, stream_chunks=stream_chunks, error_style=error_style
        )
        if log_limit < 1:
            raise ValueError("log_limit must be at least 1")
        self._log: deque[_LogEntry] = deque(maxlen=log_limit)

    def __repr__(self) -> str:
        return f"EmulatorState(models={len(self._models)}, {self._settings!r})"

    # -- settings and faults -------------------------------------------------------

    def settings(self) -> Settings:
        with self._cond:
            return self._settings

    def update_settings(self, **changes: Any) -> None:
        """Replace some of `Settings`' fields (validated); wakes every waiter."""
        with self._cond:
            current = self._settings
            merged = {name: getattr(current, name) for name in Settings.__slots__}
            merged.update(changes)
            settings = Settings(**merged)
            if settings.token is not None and (
                not isinstance(settings.token, str) or not settings.token
            ):
                raise ValueError("token must be a non-empty string or None")
            if not _is_number(settings.stream_interval) or settings.stream_interval < 0:
                raise ValueError("stream interval must be a number >= 0")
            if not _is_int(settings.stream_chunks) or settings.stream_chunks < 1:
                raise ValueError("stream chunks must be an integer >= 1")
            if settings.error_style not in ERROR_STYLES:
                raise ValueError(f"error style must be one of {ERROR_STYLES}")
            for name in ("v0_only", "jit", "auto_evict", "legacy_load_answer"):
                if not isinstance(getattr(settings, name), bool):
                    raise ValueError(f"{name} must be true or false")
            self._settings = settings
            self._changed()

    def set_load_delay(self, seconds: float, model: str | None = None) -> None:
        if not _is_number(seconds) or seconds < 0:
            raise ValueError("load delay must be a number >= 0")
        with self._cond:
            if model is None:
                self._default_delay = float(seconds)
                self._model_delays.clear()
            else:
                self._model(model)
                self._model_delays[model] = float(seconds)
            self._changed()

    def fail_next_loads(self, n: int, message: str, status: int) -> None:
        if not _is_int(n) or n < 0:
            raise ValueError("n must be an integer >= 0")
        if not _is_int(status) or not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if not isinstance(message, str):
            raise ValueError("message must be a string")
        with self._cond:
            self._fail_remaining = n
            self._fail_message = message
            self._fail_status = status
            self._changed()

    def hang_unloads(self, on: bool) -> None:
        with self._cond:
            self._hang_unloads = bool(on)
            self._changed()

    def describe(self) -> dict[str, Any]:
        """The switches, for `GET /_emulator/state` (never the token itself)."""
        with self._cond:
            s = self._settings
            return {
                "token_set": s.token is not None,
                "v0_only": s.v0_only,
                "jit": s.jit,
                "stream_interval": s.stream_interval,
                "stream_chunks": s.stream_chunks,
                "error_style": s.error_style,
                "auto_evict": s.auto_evict,
                "legacy_load_answer": s.legacy_load_answer,
                "clock_offset": self._clock_offset,
                "load_delay": self._default_delay,
                "model_load_delays": dict(self._model_delays),
                "fail_next_loads": self._fail_remaining,
                "hang_unloads": self._hang_unloads,
                "models": list(self._models),
            }

    # -- lifetime ------------------------------------------------------------------

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def interrupt(self) -> None:
        """The server went down: every request in flight is abandoned."""
        with self._cond:
            self._generation += 1
            self._changed()

    def close(self) -> None:
        """The emulator stopped: nothing waits any more."""
        with self._cond:
            self._closed = True
            self._generation += 1
            self._changed()

    def touch(self) -> None:
        """Something outside this object changed (the server went up or down): wake waiters."""
        with self._cond:
            self._changed()

    def forget(self) -> None:
        """A restart: LM Studio comes back with nothing loaded."""
        with self._cond:
            self._instances.clear()
            self._changed()

    def wait(self, seconds: float, generation: int) -> None:
        """Sleep `seconds`, or raise Interrupted as soon as the server goes down."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while True:
                self._check(generation)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Block until `predicate()` holds; it runs without the lock, after each change."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._changes
            if predicate():
                return
            with self._cond:
                while self._changes == seen:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"condition not met within {timeout} s")
                    self._cond.wait(remaining)

    # -- models and instances ------------------------------------------------------

    def now(self) -> float:
        """The emulator's clock for TTLs: monotonic time, plus advance_clock()'s offset."""
        with self._cond:
            return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the TTL clock on; idle JIT instances whose TTL ran out are unloaded now."""
        if not _is_number(seconds) or seconds < 0:
            raise ValueError("seconds must be a number >= 0")
        with self._cond:
            self._clock_offset += float(seconds)
            self._expire()
            self._changed()

    def instance_info(self) -> dict[str, dict[str, Any]]:
        """Instance id -> model, jit, ttl, idle seconds (None while in use), requests in use."""
        with self._cond:
            self._expire()
            now = self._now()
            return {
                i.id: {
                    "model": key,
                    "jit": i.jit,
                    "ttl": i.ttl,
                    "idle_seconds": None if i.busy else now - i.last_used,
                    "in_use": i.busy,
                }
                for key, instances in self._instances.items()
                for i in instances
            }

    def models(self) -> list[tuple[CatalogModel, list[tuple[str, dict[str, Any]]]]]:
        """Every model with its loaded instances as (id, config), in catalog order."""
        with self._cond:
            self._expire()
            return [
                (
                    model,
                    [(i.id, dict(i.config)) for i in self._instances.get(model.key, [])],
                )
                for model in self._models.values()
            ]

    def loaded(self) -> dict[str, list[str]]:
        with self._cond:
            self._expire()
            return {key: [i.id for i in insts] for key, insts in self._instances.items() if insts}

    def model(self, key: str) -> CatalogModel:
        with self._cond:
            return self._model(key)

    def load(
        self,
        key: str,
        options: Mapping[str, Any],
        *,
        generation: int,
        jit: bool = False,
        ttl: float | None = None,
    ) -> LoadDone:
        """Load `key` as a client would: honours the delay and injected failures.

        A JIT load (`jit=True`) gets an idle TTL (`ttl`, else DEFAULT_JIT_TTL), first
        unloads the previous JIT-loaded instances under auto-evict, and returns its
        instance already claimed by the request that caused it (see `release`).
        Concurrent JIT loads of one model each make their own instance, as LM Studio's
        do (bug-tracker #1751). Raises NoSuchModel, ValueError (bad options),
        InjectedLoadFailure or Interrupted.
        """
        with self._cond:
            model = self._model(key)
            config, echo = build_load_config(model, options)
            if jit and self._settings.auto_evict:
                self._evict_jit_instances()
            failure: InjectedLoadFailure | None = None
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                failure = InjectedLoadFailure(self._fail_message, self._fail_status)
                self._changed()
            started = time.monotonic()
            # The delay is re-read on each wake-up so that lowering it releases this load.
            while True:
                self._check(generation)
                remaining = started + self._delay_for(key) - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            seconds = time.monotonic() - started
            if failure is not None:
                raise failure
            if jit:
                instance = self._add_instance(key, config, jit=True, ttl=ttl or DEFAULT_JIT_TTL)
                instance.busy += 1
            else:
                instance = self._add_instance(key, config, jit=False)
            return LoadDone(model, instance.id, seconds, echo)

    def load_behind(self, key: str, config: Mapping[str, Any] | None) -> str:
        """Load at once, as the GUI would: no delay, no injected failure."""
        with self._cond:
            model = self._model(key)
            instance_config, _ = build_load_config(model, config or {})
            return self._add_instance(key, instance_config, jit=False).id

    def unload(self, instance_id: str, *, generation: int) -> None:
        """Unload as a client would: blocks while unloads are hung.

        Raises NoSuchInstance or Interrupted.
        """
        with self._cond:
            self._find(instance_id)
            while True:
                self._check(generation)
                if not self._hang_unloads:
                    break
                self._cond.wait()
            self._remove(instance_id)

    def unload_behind(self, instance_id: str) -> None:
        with self._cond:
            self._remove(instance_id)

    def claim_for_inference(self, name: str) -> tuple[CatalogModel, str | None]:
        """The model an inference request names (key or instance id) and the instance serving it.

        The instance (None when not loaded) is claimed: its idle timer stops until
        `release` (LM Studio: "a model is considered idle if it's not doing any work").
        """
        with self._cond:
            self._expire()
            for key, instances in self._instances.items():
                for instance in instances:
                    if instance.id == name:
                        instance.busy += 1
                        return self._models[key], instance.id
            model = self._model(name)
            loaded = self._instances.get(name)
            if not loaded:
                return model, None
            loaded[0].busy += 1
            return model, loaded[0].id

    def release(self, instance_id: str) -> None:
        """A claimed request (or the JIT load it caused) ended: the idle timer restarts."""
        with self._cond:
            for instances in self._instances.values():
                for instance in instances:
                    if instance.id == instance_id:
                        instance.busy = max(0, instance.busy - 1)
                        instance.last_used = self._now()
                        self._changed()
                        return

    def inference_ids(self, include_unloaded: bool) -> list[tuple[str, CatalogModel]]:
        """What `/v1/models` lists: loaded instance ids, plus every key under JIT."""
        with self._cond:
            self._expire()
            listed: list[tuple[str, CatalogModel]] = []
            for model in self._models.values():
                ids = [i.id for i in self._instances.get(model.key, [])]
                if include_unloaded and model.key not in ids:
                    ids.insert(0, model.key)
                listed.extend((instance_id, model) for instance_id in ids)
            return listed

    # -- request log ---------------------------------------------------------------

    def record(self, t: float, method: str, path: str, body: Any, authorized: bool) -> _LogEntry:
        entry = _LogEntry(t, method, path, body, authorized)
        with self._cond:
            self._log.append(entry)
            self._changed()
        return entry

    def record_status(self, entry: _LogEntry, status: int) -> None:
        with self._cond:
            entry.status = status
            self._changed()

    def record_done(self, entry: _LogEntry) -> None:
        with self._cond:
            if entry.t_done is None:
                entry.t_done = time.monotonic()
                self._changed()

    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return [entry.freeze() for entry in self._log]

    def clear_requests(self) -> None:
        with self._cond:
            self._log.clear()
            self._changed()

    # -- internals (call with the lock held) ---------------------------------------

    def _changed(self) -> None:
        self._changes += 1
        self._cond.notify_all()

    def _check(self, generation: int) -> None:
        if self._closed or generation != self._generation:
            raise Interrupted

    def _model(self, key: str) -> CatalogModel:
        try:
            return self._models[key]
        except KeyError:
            raise NoSuchModel(f"model '{key}' not found") from None

    def _delay_for(self, key: str) -> float:
        return self._model_delays.get(key, self._default_delay)

    def _find(self, instance_id: str) -> tuple[str, _Instance]:
        for key, instances in self._instances.items():
            for instance in instances:
                if instance.id == instance_id:
                    return key, instance
        raise NoSuchInstance(f"no loaded instance with id '{instance_id}'")

    def _remove(self, instance_id: str) -> None:
        key, instance = self._find(instance_id)
        self._instances[key].remove(instance)
        if not self._instances[key]:
            del self._instances[key]
        self._changed()

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _expire(self) -> None:
        """Unload idle JIT instances whose TTL ran out (checked whenever the state is read)."""
        now = self._now()
        for key in list(self._instances):
            kept = [i for i in self._instances[key] if not i.expired(now)]
            if len(kept) != len(self._instances[key]):
                self._instances[key] = kept
                self._changed()
            if not kept:
                del self._instances[key]

    def _add_instance(
        self, key: str, config: dict[str, Any], *, jit: bool, ttl: float | None = None
    ) -> _Instance:
        instances = self._instances.setdefault(key, [])
        taken = {i.id for i in instances}
        # The first instance is named after the key; later copies get ":2", ":3", ...
        instance_id, n = key, 1
        while instance_id in taken:
            n += 1
            instance_id = f"{key}:{n}"
        instance = _Instance(instance_id, config, jit, ttl, self._now())
        instances.append(instance)
        self._changed()
        return instance

    def _evict_jit_instances(self) -> None:
        for key in list(self._instances):
            kept = [i for i in self._instances[key] if not i.jit]
            if len(kept) != len(self._instances[key]):
                self._instances[key] = kept
                self._changed()
            if not kept:
                del self._instances[key]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
