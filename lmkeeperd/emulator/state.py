"""What the emulated LM Studio holds: loaded instances, fault settings, the request log.

The lock, the waits and the generations that interrupt them are `Guarded`
(guard.py, with the theory of operation); the parts live in their own modules,
none of them locked, only ever used from here with the lock held:
`instances.py` (instances, JIT TTLs, the clock), `faults.py` (load delays,
failures, hung unloads), `request_log.py`, `settings.py`, `load_config.py`,
`errors.py`. Their public names stay importable from here, as before the split.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lmkeeperd.emulator.catalog import CatalogModel
from lmkeeperd.emulator.checks import is_number
from lmkeeperd.emulator.errors import (
    InjectedLoadFailure,
    Interrupted,
    NoSuchInstance,
    NoSuchModel,
    NotLoaded,
)
from lmkeeperd.emulator.faults import LoadFaults, check_delay
from lmkeeperd.emulator.guard import Guarded
from lmkeeperd.emulator.instances import DEFAULT_JIT_TTL, Instances
from lmkeeperd.emulator.load_config import (
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_PARALLEL,
    LOAD_KEYS,
    LOAD_OPTIONS,
    build_load_config,
)
from lmkeeperd.emulator.request_log import DEFAULT_LOG_LIMIT, LogEntry, RequestLog, RequestRecord
from lmkeeperd.emulator.settings import ERROR_STYLES, Settings

# Every name defined here before the split stays importable from here.
__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_EVAL_BATCH_SIZE",
    "DEFAULT_JIT_TTL",
    "DEFAULT_LOG_LIMIT",
    "DEFAULT_PARALLEL",
    "ERROR_STYLES",
    "LOAD_KEYS",
    "LOAD_OPTIONS",
    "EmulatorState",
    "InjectedLoadFailure",
    "Interrupted",
    "LoadDone",
    "NoSuchInstance",
    "NoSuchModel",
    "NotLoaded",
    "RequestRecord",
    "Settings",
    "build_load_config",
]


@dataclass(frozen=True, slots=True)
class LoadDone:
    model: CatalogModel
    instance_id: str
    seconds: float
    echo_config: Mapping[str, Any]


class EmulatorState(Guarded):
    """Models, instances, fault switches and the request log, behind one lock (guard.py)."""

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
        super().__init__()
        self._models: dict[str, CatalogModel] = {}
        for model in models:
            if model.key in self._models:
                raise ValueError(f"model key {model.key!r} appears twice in the catalog")
            self._models[model.key] = model
        self._instances = Instances(on_change=self._changed)
        self._faults = LoadFaults()
        self._settings = Settings(token, v0_only, jit, 0.0, 1, "object")
        self.update_settings(
            stream_interval=stream_interval, stream_chunks=stream_chunks, error_style=error_style
        )
        self._log = RequestLog(log_limit)

    def __repr__(self) -> str:
        return f"EmulatorState(models={len(self._models)}, {self._settings!r})"

    # -- settings and faults -------------------------------------------------------

    def settings(self) -> Settings:
        with self._cond:
            return self._settings

    def update_settings(self, **changes: Any) -> None:
        """Replace some of `Settings`' fields (validated); wakes every waiter."""
        with self._cond:
            self._settings = self._settings.replace(**changes)
            self._changed()

    def set_load_delay(self, seconds: float, model: str | None = None) -> None:
        check_delay(seconds)  # before the model: a bad number is the error reported
        with self._cond:
            if model is not None:
                self._model(model)
            self._faults.set_delay(seconds, model)
            self._changed()

    def fail_next_loads(self, n: int, message: str, status: int) -> None:
        with self._cond:
            self._faults.fail_next(n, message, status)
            self._changed()

    def set_guardrail(self, memory_gb: float | None, max_models: int | None) -> None:
        with self._cond:
            self._faults.set_guardrail(memory_gb, max_models)
            self._changed()

    def hang_unloads(self, on: bool) -> None:
        with self._cond:
            self._faults.hang_unloads = bool(on)
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
                "clock_offset": self._instances.clock_offset,
                **self._faults.describe(),
                "models": list(self._models),
            }

    # -- lifetime (the rest is in Guarded) ---------------------------------------

    def forget(self) -> None:
        """A restart: LM Studio comes back with nothing loaded."""
        with self._cond:
            self._instances.clear()
            self._changed()

    # -- models and instances ------------------------------------------------------

    def now(self) -> float:
        """The emulator's clock for TTLs: monotonic time, plus advance_clock()'s offset."""
        with self._cond:
            return self._instances.now()

    def advance_clock(self, seconds: float) -> None:
        """Move the TTL clock on; idle JIT instances whose TTL ran out are unloaded now."""
        if not is_number(seconds) or seconds < 0:
            raise ValueError("seconds must be a number >= 0")
        with self._cond:
            self._instances.advance_clock(seconds)
            self._changed()

    def instance_info(self) -> dict[str, dict[str, Any]]:
        """Instance id -> model, jit, ttl, idle seconds (None while in use), requests in use."""
        with self._cond:
            self._instances.expire()
            return self._instances.info()

    def models(self) -> list[tuple[CatalogModel, list[tuple[str, dict[str, Any]]]]]:
        """Every model with its loaded instances as (id, config), in catalog order."""
        with self._cond:
            self._instances.expire()
            return [(model, self._instances.configs(model.key)) for model in self._models.values()]

    def loaded(self) -> dict[str, list[str]]:
        with self._cond:
            self._instances.expire()
            return self._instances.loaded()

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
        InjectedLoadFailure (GuardrailRefusal when the guardrail says no) or Interrupted.
        """
        with self._cond:
            model = self._model(key)
            config, echo = build_load_config(model, options)
            if jit and self._settings.auto_evict:
                self._instances.evict_jit()
            sizes = [
                self._models[key_].size_bytes
                for key_, ids in self._instances.loaded().items()
                for _ in ids
            ]
            refusal = self._faults.guardrail_refusal(model.size_bytes, sizes)
            if refusal is not None:
                raise refusal  # at once, before any delay: LM Studio estimates first
            failure = self._faults.take_failure()
            if failure is not None:
                self._changed()
            started = time.monotonic()
            # The delay is re-read on each wake-up so that lowering it releases this load.
            while True:
                self._check(generation)
                remaining = started + self._faults.delay_for(key) - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            seconds = time.monotonic() - started
            if failure is not None:
                raise failure
            if jit:
                instance = self._instances.add(key, config, jit=True, ttl=ttl or DEFAULT_JIT_TTL)
                instance.busy += 1
            else:
                instance = self._instances.add(key, config, jit=False)
            return LoadDone(model, instance.id, seconds, echo)

    def load_behind(self, key: str, config: Mapping[str, Any] | None) -> str:
        """Load at once, as the GUI would: no delay, no injected failure."""
        with self._cond:
            model = self._model(key)
            instance_config, _ = build_load_config(model, config or {})
            return self._instances.add(key, instance_config, jit=False).id

    def unload(self, instance_id: str, *, generation: int) -> None:
        """Unload as a client would: blocks while unloads are hung.

        Raises NoSuchInstance or Interrupted.
        """
        with self._cond:
            self._instances.find(instance_id)
            while True:
                self._check(generation)
                if not self._faults.hang_unloads:
                    break
                self._cond.wait()
            self._instances.remove(instance_id)

    def unload_behind(self, instance_id: str) -> None:
        with self._cond:
            self._instances.remove(instance_id)

    def claim_for_inference(self, name: str) -> tuple[CatalogModel, str | None]:
        """The model an inference request names (key or instance id) and the instance serving it.

        The instance (None when not loaded) is claimed: its idle timer stops until
        `release` (LM Studio: "a model is considered idle if it's not doing any work").
        """
        with self._cond:
            self._instances.expire()
            claimed = self._instances.claim(name)
            if claimed is None:
                return self._model(name), None
            key, instance_id = claimed
            return self._models[key], instance_id

    def release(self, instance_id: str) -> None:
        """A claimed request (or the JIT load it caused) ended: the idle timer restarts."""
        with self._cond:
            self._instances.release(instance_id)

    def inference_ids(self, include_unloaded: bool) -> list[tuple[str, CatalogModel]]:
        """What `/v1/models` lists: loaded instance ids, plus every key under JIT."""
        with self._cond:
            self._instances.expire()
            listed: list[tuple[str, CatalogModel]] = []
            for model in self._models.values():
                ids = self._instances.ids(model.key)
                if include_unloaded and model.key not in ids:
                    ids.insert(0, model.key)
                listed.extend((instance_id, model) for instance_id in ids)
            return listed

    # -- request log ---------------------------------------------------------------

    def record(self, t: float, method: str, path: str, body: Any, authorized: bool) -> LogEntry:
        entry = LogEntry(t, method, path, body, authorized)
        with self._cond:
            self._log.add(entry)
            self._changed()
        return entry

    def record_status(self, entry: LogEntry, status: int) -> None:
        with self._cond:
            entry.status = status
            self._changed()

    def record_done(self, entry: LogEntry) -> None:
        with self._cond:
            if entry.t_done is None:
                entry.t_done = time.monotonic()
                self._changed()

    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return self._log.records()

    def clear_requests(self) -> None:
        with self._cond:
            self._log.clear()
            self._changed()

    # -- internals (call with the lock held) ---------------------------------------

    def _model(self, key: str) -> CatalogModel:
        try:
            return self._models[key]
        except KeyError:
            raise NoSuchModel(f"model '{key}' not found") from None
