"""Factories that turn the config into the daemon's parts; other commands reuse them.

`lmkeeperd estimate` builds the same LM Studio client and memory advisor the
daemon runs with, so both read the config the same way.
"""

from __future__ import annotations

from collections.abc import Collection

from lmkeeperd.config import Config
from lmkeeperd.core import Settings
from lmkeeperd.daemon.memory_advisor import (
    REMOTE_UNKNOWN,
    MemoryCheck,
    budget_bytes,
    server_is_local,
)
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.proxy import ProxySettings, Token


def settings_from(
    config: Config,
    total_bytes: int | None = None,
    catalog: Collection[str] | None = None,
) -> Settings:
    """The core's settings from `config`.

    `catalog`: the server's model keys when known; pinned keys it does not list are
    left out (L23: an unknown key changes nothing; residency_feed.py reports them).
    `total_bytes`: this machine's memory, for the budget (read when not given).
    """
    m = config.model
    pinned = m.pinned if catalog is None else tuple(k for k in m.pinned if k in catalog)
    budget = budget_bytes(config, total_bytes)
    return Settings(
        auto_load=m.auto_load,
        idle_timeout=m.idle_timeout,
        switch_debounce=m.switch_debounce,
        draft_model=m.draft_model,
        load_config=dict(m.load),
        unload_on_exit=m.unload_on_exit,
        busy_switch_wait=m.busy_switch_wait,
        max_loaded=m.max_loaded,
        pinned=pinned,
        switch=m.switch,
        budget_gb=None if budget is None else budget / 1e9,
    )


__all__ = [
    "REMOTE_UNKNOWN",
    "budget_bytes",
    "loaded_map",
    "make_client",
    "make_memory_check",
    "proxy_settings",
    "server_is_local",
    "settings_from",
]


def make_client(config: Config) -> LMStudioClient:
    s = config.server
    return LMStudioClient.from_settings(
        base_url=s.url,
        token_env=s.api_token_env,
        request_timeout=s.request_timeout,
        load_timeout=s.load_timeout,
    )


def make_memory_check(config: Config) -> MemoryCheck:
    return MemoryCheck(config)


def loaded_map(models: list[ModelInfo]) -> dict[str, tuple[str, ...]]:
    return {m.key: m.instance_ids for m in models if m.loaded_instances}


def proxy_settings(config: Config) -> ProxySettings:
    s, p = config.server, config.proxy
    return ProxySettings(
        upstream=s.url,
        select_on_request=p.select_on_request,
        inject_token=p.inject_token,
        token=Token.from_env(s.api_token_env) if p.inject_token else None,
        connect_timeout=s.request_timeout,
        read_timeout=s.load_timeout,
    )
