"""Loaded instances: ids, configs, and the JIT idle-TTL bookkeeping on the emulator's clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lmkeeperd.emulator.errors import NoSuchInstance

# A JIT-loaded model's idle TTL when the request names none (ttl-and-auto-evict.md).
DEFAULT_JIT_TTL = 3600.0


class Instance:
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


class Instances:
    """Every model key's loaded instances, in load order, and the TTL clock.

    Not locked: `EmulatorState` calls every method with its lock held; `on_change`
    (its notifier) is called whenever an instance comes or goes or is released.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._by_key: dict[str, list[Instance]] = {}
        self._on_change = on_change
        # The TTL clock: monotonic time plus what advance_clock() added, so a test can
        # expire an idle JIT model without waiting an hour.
        self.clock_offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        self.clock_offset += float(seconds)
        self.expire()

    def expire(self) -> None:
        """Unload idle JIT instances whose TTL ran out (checked whenever the state is read)."""
        now = self.now()
        self._keep_only(lambda i: not i.expired(now))

    def evict_jit(self) -> None:
        """Auto-evict: unload every JIT-loaded instance (manual loads are never touched)."""
        self._keep_only(lambda i: not i.jit)

    def clear(self) -> None:
        self._by_key.clear()

    def info(self) -> dict[str, dict[str, Any]]:
        """Instance id -> model, jit, ttl, idle seconds (None while in use), requests in use."""
        now = self.now()
        return {
            i.id: {
                "model": key,
                "jit": i.jit,
                "ttl": i.ttl,
                "idle_seconds": None if i.busy else now - i.last_used,
                "in_use": i.busy,
            }
            for key, instances in self._by_key.items()
            for i in instances
        }

    def configs(self, key: str) -> list[tuple[str, dict[str, Any]]]:
        return [(i.id, dict(i.config)) for i in self._by_key.get(key, [])]

    def ids(self, key: str) -> list[str]:
        return [i.id for i in self._by_key.get(key, [])]

    def loaded(self) -> dict[str, list[str]]:
        return {key: [i.id for i in insts] for key, insts in self._by_key.items() if insts}

    def add(
        self, key: str, config: dict[str, Any], *, jit: bool, ttl: float | None = None
    ) -> Instance:
        instances = self._by_key.setdefault(key, [])
        taken = {i.id for i in instances}
        # The first instance is named after the key; later copies get ":2", ":3", ...
        instance_id, n = key, 1
        while instance_id in taken:
            n += 1
            instance_id = f"{key}:{n}"
        instance = Instance(instance_id, config, jit, ttl, self.now())
        instances.append(instance)
        self._on_change()
        return instance

    def find(self, instance_id: str) -> tuple[str, Instance]:
        found = self._with_id(instance_id)
        if found is None:
            raise NoSuchInstance(f"no loaded instance with id '{instance_id}'")
        return found

    def remove(self, instance_id: str) -> None:
        key, instance = self.find(instance_id)
        self._by_key[key].remove(instance)
        if not self._by_key[key]:
            del self._by_key[key]
        self._on_change()

    def claim(self, name: str) -> tuple[str, str] | None:
        """(model key, instance id) serving a request naming `name`, an instance id or a key.

        The instance is claimed: its idle timer stops until `release`. A key with
        several instances is served by the first. None when nothing loaded matches.
        """
        found = self._with_id(name)
        if found is None:
            loaded = self._by_key.get(name)
            if not loaded:
                return None
            found = name, loaded[0]
        key, instance = found
        instance.busy += 1
        return key, instance.id

    def release(self, instance_id: str) -> None:
        """A claimed request (or the JIT load it caused) ended: the idle timer restarts."""
        found = self._with_id(instance_id)
        if found is not None:
            instance = found[1]
            instance.busy = max(0, instance.busy - 1)
            instance.last_used = self.now()
            self._on_change()

    def _with_id(self, instance_id: str) -> tuple[str, Instance] | None:
        for key, instances in self._by_key.items():
            for instance in instances:
                if instance.id == instance_id:
                    return key, instance
        return None

    def _keep_only(self, keep: Callable[[Instance], bool]) -> None:
        for key in list(self._by_key):
            kept = [i for i in self._by_key[key] if keep(i)]
            if len(kept) != len(self._by_key[key]):
                self._by_key[key] = kept
                self._on_change()
            if not kept:
                del self._by_key[key]
