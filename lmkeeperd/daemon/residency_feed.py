"""What the core's residency rules (L24-L28) need from the daemon, fed after each listing.

- `Estimates`: the GB each model needs on the server, its draft included (L25;
  LM Studio #556: drafts ignoring guardrails have crashed machines). From the
  memory estimator (lmkeeperd/memory/: the GGUF header when the file is found,
  the catalog size otherwise), computed once per model, context and draft, in a
  thread (a header read is disk I/O), and fed as `ModelEstimates`: for the
  catalog's models after every listing, and for a selection before it reaches
  the core (`ensure`).
- `PinnedCheck`: `[model] pinned` checked against the catalog like a selection
  (L23): a key the catalog does not list is reported as `selection_unknown`
  (source `pinned`) and changes nothing; the core is pinned only what the
  catalog lists. Until the first listing nothing is pinned (driver.py), so an
  unknown key is never loaded; the first listing then pins the known ones, and
  the core loads them (start, and again after LM Studio comes back: L17).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping

import structlog

from lmkeeperd.config import Config
from lmkeeperd.core import ModelEstimates, SettingsChanged, UnknownKey, check_selection
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.wiring import settings_from
from lmkeeperd.lmstudio.models import ModelInfo

log = structlog.get_logger()

GB = 1e9

_Key = tuple[str, int | None, str]  # model, configured context length, draft model


def _context(config: Config) -> int | None:
    value = config.model.load.get("context_length")
    return value if isinstance(value, int) else None


class Estimates:
    """L25's estimates, cached per model, context and draft; see the module docstring."""

    def __init__(self, host: Host, memory: Callable[[], MemoryCheck]) -> None:
        self._host = host
        self._memory = memory
        self._cache: dict[_Key, float] = {}
        self._fed: dict[str, float] = {}  # what the core has now
        self._lock = asyncio.Lock()

    def _key(self, model: str) -> _Key:
        config = self._host.config
        return (model, _context(config), config.model.draft_model)

    def _compute(self, models: Mapping[str, ModelInfo], wanted: list[str]) -> dict[_Key, float]:
        """GB per model (its draft included): disk reads, so it runs in a thread."""
        memory = self._memory()
        found: dict[_Key, float] = {}
        for model in wanted:
            info = models.get(model)
            if info is None:
                continue
            try:
                own = memory.estimate(info)
            except Exception as e:  # one unreadable file must not hide the others
                log.debug("estimate_failed", model=model, error=str(e))
                own = None
            if own is None:
                continue
            total = own.total_bytes
            key = self._key(model)
            draft = models.get(key[2]) if key[2] and key[2] != model else None
            if draft is not None and info.type == "llm":
                try:
                    extra = memory.estimate(draft)
                except Exception:
                    extra = None
                total += extra.total_bytes if extra is not None else (draft.size_bytes or 0)
            found[key] = round(total / GB, 3)
        return found

    async def update(self, models: Mapping[str, ModelInfo], wanted: Collection[str]) -> None:
        """Estimate what `wanted` lacks, then feed every estimate the core does not have."""
        async with self._lock:
            missing = [m for m in wanted if self._key(m) not in self._cache]
            if missing:
                self._cache.update(await asyncio.to_thread(self._compute, dict(models), missing))
            fresh: dict[str, float] = {}
            for model in wanted:
                gb = self._cache.get(self._key(model))
                if gb is not None and self._fed.get(model) != gb:
                    fresh[model] = gb
            if fresh and not self._host.core.stopped:
                self._fed.update(fresh)
                self._host.feed(ModelEstimates(fresh))

    def listed(self, models: Mapping[str, ModelInfo]) -> None:
        """After a listing: the catalog's models, estimated in the background."""
        self._host.spawn(self.update(models, list(models)))

    async def ensure(self, model: str, models: Mapping[str, ModelInfo]) -> None:
        """Before a selection reaches the core: its estimate, if one can be made."""
        await self.update(models, [model])

    def forget(self) -> None:
        """A reloaded config (context, draft, models folder): estimate anew."""
        self._cache.clear()
        self._fed.clear()


class PinnedCheck:
    """`[model] pinned` against the catalog (L23); see the module docstring."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.catalog: frozenset[str] | None = None
        self._told: set[str] = set()  # unknown pinned keys already reported

    def settings_for(self, config: Config) -> SettingsChanged:
        """The core's settings for `config`, pinned to what the catalog lists."""
        return SettingsChanged(settings_from(config, catalog=self.catalog or frozenset()))

    def listed(self, catalog: Collection[str]) -> None:
        """A listing succeeded: report unknown pinned keys once, pin the known ones."""
        self.catalog = frozenset(catalog)
        config = self._host.config
        for key in config.model.pinned:
            verdict = check_selection(key, self.catalog)
            if isinstance(verdict, UnknownKey) and key not in self._told:
                self._told.add(key)
                self._host.announce(
                    "selection_unknown",
                    {
                        "model": key,
                        "nearest": list(verdict.nearest),
                        "source": "pinned",
                        "message": verdict.message,
                    },
                )
        wanted = tuple(k for k in config.model.pinned if k in self.catalog)
        if tuple(self._host.core.settings.pinned) != wanted and not self._host.core.stopped:
            self._host.feed(self.settings_for(config))

    def reconfigured(self) -> None:
        """A reloaded config: its unknown pinned keys are reported again at the next listing."""
        self._told.clear()
