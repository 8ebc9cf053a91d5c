"""Load options: which a load accepts, LM Studio's defaults, the instance config they make."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmkeeperd.emulator.catalog import CatalogModel

# LM Studio's defaults for a load that does not set them.
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_EVAL_BATCH_SIZE = 512
DEFAULT_PARALLEL = 4

_INT_OPTIONS = ("context_length", "eval_batch_size", "num_experts")
_BOOL_OPTIONS = ("flash_attention", "offload_kv_cache_to_gpu")
LOAD_OPTIONS = _INT_OPTIONS + _BOOL_OPTIONS
# Every key `POST /api/v1/models/load` accepts (lmstudio-real.md): no `ttl`, no `parallel`.
LOAD_KEYS = ("model", *LOAD_OPTIONS, "echo_load_config")


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
