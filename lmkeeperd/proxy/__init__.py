"""The observing proxy in front of LM Studio's API (see server.py and docs/proxy.md)."""

from __future__ import annotations

from lmkeeperd.core.policy import Verdict
from lmkeeperd.proxy.hooks import ProxyHooks, ProxySettings, ProxyStats, SelectionError, Token
from lmkeeperd.proxy.server import METRICS_PATH, ProxyServer, is_inference, model_of
from lmkeeperd.proxy.switching import (
    GateWork,
    OpenStreams,
    SelectModel,
    SwitchGate,
    SwitchWorld,
)

__all__ = [
    "METRICS_PATH",
    "GateWork",
    "OpenStreams",
    "ProxyHooks",
    "ProxyServer",
    "ProxySettings",
    "ProxyStats",
    "SelectModel",
    "SelectionError",
    "SwitchGate",
    "SwitchWorld",
    "Token",
    "Verdict",
    "is_inference",
    "model_of",
]
