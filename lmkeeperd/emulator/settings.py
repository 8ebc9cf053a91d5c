"""The switches a request reads once when it arrives, and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmkeeperd.emulator.checks import is_int, is_number

ERROR_STYLES = ("object", "string")


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

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed; ValueError naming the first bad one."""
        merged = {name: getattr(self, name) for name in Settings.__slots__}
        merged.update(changes)
        settings = Settings(**merged)
        if settings.token is not None and (
            not isinstance(settings.token, str) or not settings.token
        ):
            raise ValueError("token must be a non-empty string or None")
        if not is_number(settings.stream_interval) or settings.stream_interval < 0:
            raise ValueError("stream interval must be a number >= 0")
        if not is_int(settings.stream_chunks) or settings.stream_chunks < 1:
            raise ValueError("stream chunks must be an integer >= 1")
        if settings.error_style not in ERROR_STYLES:
            raise ValueError(f"error style must be one of {ERROR_STYLES}")
        for name in ("v0_only", "jit", "auto_evict", "legacy_load_answer"):
            if not isinstance(getattr(settings, name), bool):
                raise ValueError(f"{name} must be true or false")
        return settings
