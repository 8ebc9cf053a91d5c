"""Factories that turn the config into the daemon's parts; other commands reuse them.

`lmkeeperd estimate` builds the same LM Studio client and memory advisor the
daemon runs with, so both read the config the same way.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from lmkeeperd.config import Config, is_loopback
from lmkeeperd.core import Settings
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.proxy import ProxySettings, Token

REMOTE_UNKNOWN = "unknown: the server is remote; set [memory] budget"
"""What a memory verdict says when the server is on another machine and no budget is set."""


def server_is_local(config: Config) -> bool:
    """True when `[server] url` names this machine (a loopback host): its RAM is the server's."""
    host = urlsplit(config.server.url).hostname or ""
    return is_loopback(host)


def budget_bytes(config: Config, total_bytes: int | None = None) -> int | None:
    """L25's memory budget: `[memory] budget`, else `budget_fraction` of this machine's memory.

    None when the server is remote and no budget is set (this machine's RAM says nothing
    of the server's: admission then counts models only), or when the memory cannot be read.
    `total_bytes` is this machine's effective total; read from the probe when not given.
    """
    mem = config.memory
    if mem.budget is not None:
        return mem.budget
    if not server_is_local(config):
        return None
    if total_bytes is None:
        from lmkeeperd.memory import PsutilProbe

        try:
            total_bytes = PsutilProbe().read().effective_total_bytes
        except Exception:  # no figure: count models only rather than guess
            return None
    return int(mem.budget_fraction * total_bytes)


def settings_from(config: Config, total_bytes: int | None = None) -> Settings:
    m = config.model
    return Settings(
        auto_load=m.auto_load,
        idle_timeout=m.idle_timeout,
        switch_debounce=m.switch_debounce,
        draft_model=m.draft_model,
        load_config=dict(m.load),
        unload_on_exit=m.unload_on_exit,
        busy_switch_wait=m.busy_switch_wait,
        max_loaded=m.max_loaded,
        pinned=m.pinned,
    )


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
