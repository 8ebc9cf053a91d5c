"""lmkeeperd: keeps the right local LLM loaded in LM Studio, and nothing else."""

from __future__ import annotations

__version__ = "0.1.0"
