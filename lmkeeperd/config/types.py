"""What a valid config is: frozen dataclasses with the built-in defaults.

Every field here has a rule in `schema.py`; `loading.py` builds these from checked values
only, so a `Config` that exists is a valid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
SwitchMode = Literal["auto", "make-before-break", "break-before-make"]
SWITCH_MODES: tuple[SwitchMode, ...] = ("auto", "make-before-break", "break-before-make")

# The settings LM Studio's `POST /api/v1/models/load` accepts besides `model`
# (lmstudio-api.md), with the type each must have.
LOAD_SETTINGS: tuple[str, ...] = (
    "context_length",
    "eval_batch_size",
    "flash_attention",
    "num_experts",
    "offload_kv_cache_to_gpu",
)

# Anything longer is almost surely a unit mistake, and some timer APIs reject
# very large timeouts outright.
MAX_DURATION_S = 30 * 24 * 3600.0


def _no_load_settings() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    url: str = "http://127.0.0.1:1234"
    api_token_env: str = "LM_API_TOKEN"
    request_timeout: float = 10.0
    load_timeout: float = 600.0
    reconcile_interval: float = 15.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    selected: str = ""
    auto_load: bool = True
    idle_timeout: float = 1800.0  # 0 disables idle eject (a negative value is stored as 0)
    switch_debounce: float = 0.3
    draft_model: str = ""
    unload_on_exit: bool = True
    shutdown_timeout: float = 2.0
    # L20: how long a switch waits behind a generation only LM Studio sees; 0 waits forever.
    busy_switch_wait: float = 120.0
    # L24, L25: how many selected models stay resident at once; pinned models are kept
    # loaded always and do not count against max_loaded (they count in the budget).
    max_loaded: int = 1
    pinned: tuple[str, ...] = ()
    switch: SwitchMode = "auto"  # L26
    # Empty by default: LM Studio then applies the user's own per-model settings.
    load: Mapping[str, Any] = field(default_factory=_no_load_settings)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    budget_fraction: float = 0.8
    budget: int | None = None  # bytes; None = budget_fraction of this machine's memory
    models_dir: str = ""  # "" = LM Studio's default, ~/.lmstudio/models
    pressure_eject_below: int | None = None  # bytes; None = memory-pressure eject off
    pressure_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = ""  # "" = lmkeeperd.sock in the user runtime folder (see paths.py)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: str = ""  # "host:port" of the proxy in front of [server] url; "" = off
    select_on_request: bool = False  # a request naming another model switches to it
    inject_token: bool = False  # add our token to requests that carry no Authorization


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # "host:port" of a metrics-only listener; "" = off


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
