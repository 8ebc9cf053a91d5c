"""Compare an estimate with the budget and, when it does not fit, say what to do.

`check()` is pure: it returns None when the model fits, else an `Advisory`
whose message names what would fit, namely the longest context (a multiple of
1024) and the largest smaller quantization that bring the total under the
usable budget. An advisory never blocks a load (lifecycle L12): the daemon logs
it, sends it to subscribers and loads anyway.

With an NVIDIA GPU, LM Studio offloads as much of the model as fits in free
VRAM; we assume exactly that, so only the rest has to fit in RAM. On Apple
Silicon the GPU shares RAM, so the whole model counts against RAM, and the
message says so.

All `*_gb` figures are decimal GB (10^9 bytes) with two decimals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory.budgeting import Budget
from lmkeeperd.memory.estimator import Estimate
from lmkeeperd.memory.names import GGUF_LADDER, MLX_LADDER, bits_per_weight
from lmkeeperd.memory.sizes import to_gb

_CONTEXT_STEP = 1024


@dataclass(frozen=True, slots=True)
class Advisory:
    model: str
    required_bytes: int
    # The part that must fit in RAM: required minus what goes to dedicated VRAM.
    ram_required_bytes: int
    budget_bytes: int
    available_bytes: int
    total_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    context_length: int
    confidence: str
    source: str
    message: str
    # Longest context (multiple of 1024, below the current one) that would fit.
    fitting_context: int | None = None
    suggested_quantization: str | None = None
    gpu_offload_bytes: int | None = None
    vram_total_bytes: int | None = None
    vram_free_bytes: int | None = None

    @property
    def required_gb(self) -> float:
        return to_gb(self.required_bytes)

    @property
    def budget_gb(self) -> float:
        return to_gb(self.budget_bytes)

    @property
    def available_gb(self) -> float:
        return to_gb(self.available_bytes)

    @property
    def total_gb(self) -> float:
        return to_gb(self.total_bytes)


def check(model: ModelInfo, estimate: Estimate, budget: Budget) -> Advisory | None:
    """None when `estimate` fits `budget`, else the advisory to log and send."""
    usable = budget.usable_bytes
    vram_free = budget.gpu.free_bytes if budget.gpu and not budget.is_apple_silicon else None

    def ram_need(total: int) -> int:
        return total - min(total, vram_free) if vram_free is not None else total

    required = estimate.total_bytes
    if ram_need(required) <= usable:
        return None

    fitting_context = _fitting_context(estimate, usable, ram_need)
    suggestion = _smaller_quantization(model, estimate, usable, ram_need)
    gpu_offload = min(required, vram_free) if vram_free is not None else None
    return Advisory(
        model=model.key,
        required_bytes=required,
        ram_required_bytes=ram_need(required),
        budget_bytes=budget.budget_bytes,
        available_bytes=budget.available_bytes,
        total_bytes=budget.effective_total_bytes,
        weights_bytes=estimate.weights_bytes,
        kv_cache_bytes=estimate.kv_cache_bytes,
        overhead_bytes=estimate.overhead_bytes,
        context_length=estimate.context_length,
        confidence=estimate.confidence,
        source=estimate.source,
        message=_message(model, estimate, budget, fitting_context, suggestion, gpu_offload),
        fitting_context=fitting_context,
        suggested_quantization=suggestion[0] if suggestion else None,
        gpu_offload_bytes=gpu_offload,
        vram_total_bytes=budget.gpu.total_bytes if vram_free is not None and budget.gpu else None,
        vram_free_bytes=vram_free,
    )


def advisory_event(adv: Advisory) -> dict[str, Any]:
    """The `memory_advisory` event for subscribers; the same keys, minus "event",
    make the log line: `log.warning(payload.pop("event"), **payload)`."""
    event: dict[str, Any] = {
        "event": "memory_advisory",
        "model": adv.model,
        "required_gb": adv.required_gb,
        "budget_gb": adv.budget_gb,
        "available_gb": adv.available_gb,
        "total_gb": adv.total_gb,
        "weights_gb": to_gb(adv.weights_bytes),
        "kv_cache_gb": to_gb(adv.kv_cache_bytes),
        "overhead_gb": to_gb(adv.overhead_bytes),
        "context_length": adv.context_length,
        "fitting_context": adv.fitting_context,
        "suggested_quantization": adv.suggested_quantization,
        "confidence": adv.confidence,
        "source": adv.source,
        "message": adv.message,
    }
    if adv.vram_free_bytes is not None:
        event["ram_required_gb"] = to_gb(adv.ram_required_bytes)
        event["gpu_offload_gb"] = to_gb(adv.gpu_offload_bytes or 0)
        event["vram_total_gb"] = to_gb(adv.vram_total_bytes or 0)
        event["vram_free_gb"] = to_gb(adv.vram_free_bytes)
    return event


def _fitting_context(estimate: Estimate, usable: int, ram_need: Callable[[int], int]) -> int | None:
    """Largest multiple of 1024 below the current context that fits, by bisection
    (the total grows with context)."""
    low, high = 1, (estimate.context_length - 1) // _CONTEXT_STEP
    if high < low or ram_need(estimate.total_at(low * _CONTEXT_STEP)) > usable:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if ram_need(estimate.total_at(middle * _CONTEXT_STEP)) <= usable:
            low = middle
        else:
            high = middle - 1
    return low * _CONTEXT_STEP


def _smaller_quantization(
    model: ModelInfo, estimate: Estimate, usable: int, ram_need: Callable[[int], int]
) -> tuple[str, int] | None:
    """The largest quantization below the current one that fits at the same
    context: (name, its estimated weight bytes)."""
    current_bits = estimate.bits_per_weight
    if not current_bits:
        return None
    ladder = MLX_LADDER if (model.format or estimate.format) == "mlx" else GGUF_LADDER
    for name in ladder:
        bits = bits_per_weight(name)
        if bits is None or bits >= current_bits - 0.05:
            continue
        weights = round(estimate.weights_bytes * bits / current_bits)
        if ram_need(estimate.total_at(estimate.context_length, weights_bytes=weights)) <= usable:
            return name, weights
    return None


def _message(
    model: ModelInfo,
    estimate: Estimate,
    budget: Budget,
    fitting_context: int | None,
    suggestion: tuple[str, int] | None,
    gpu_offload: int | None,
) -> str:
    # The figures behind this sentence (weights, KV cache, overhead, VRAM, the fraction)
    # are the event's own fields: the message says only what a person acts on, so the
    # console line stays one readable line and works for `estimate` too, which
    # loads nothing (the daemon's event docs say it loads anyway, lifecycle L12).
    gb = to_gb
    ram = estimate.total_bytes - gpu_offload if gpu_offload is not None else estimate.total_bytes
    needs = f"needs about {gb(estimate.total_bytes):.2f} GB"
    if gpu_offload is not None:
        needs += f" ({gb(gpu_offload):.2f} GB can go to the GPU, leaving {gb(ram):.2f} GB for RAM)"
    if budget.available_bytes < budget.budget_bytes:
        freed = (
            f", counting the {gb(budget.freed_bytes):.2f} GB the unloaded model frees"
            if budget.freed_bytes
            else ""
        )
        limit = f"only {gb(budget.available_bytes):.2f} GB is available{freed}"
    else:
        limit = f"the safe budget is {gb(budget.budget_bytes):.2f} GB"
    if budget.limited_by_cgroup:  # not the machine's RAM: say which limit, it surprises
        cap = gb(budget.effective_total_bytes)
        limit += f" ({budget.fraction:.0%} of the {cap:.2f} GB memory limit)"
    parts = [f"{model.key} may not fit in memory: it {needs}, but {limit}."]

    fixes: list[str] = []
    if fitting_context is not None:
        fixes.append(f"set [model.load] context_length to {fitting_context} or less")
    if suggestion is not None:
        fixes.append(
            f"use a smaller quantization such as {suggestion[0]} "
            f"(about {gb(suggestion[1]):.2f} GB of weights)"
        )
    elif not estimate.bits_per_weight:
        fixes.append("use a smaller quantization")
    if fixes:
        parts.append(" To make it fit, " + ", or ".join(fixes) + ".")
    else:
        parts.append(
            " Even a smaller quantization or a short context would not fit: pick a smaller model."
        )
    if budget.is_apple_silicon:
        parts.append(" (Apple Silicon: the GPU uses this same RAM.)")
    if estimate.confidence != "high":
        parts.append(
            f" ({estimate.confidence}-confidence estimate, from {_SOURCE_WORDS[estimate.source]}.)"
        )
    return "".join(parts)


_SOURCE_WORDS = {
    "gguf_header": "the GGUF header",
    "model_config": "the model's config.json",
    "server_metadata": "the server's size and parameter count",
    "model_name": "the model's name",
}
