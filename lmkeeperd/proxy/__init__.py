"""The observing proxy in front of LM Studio's API (see server.py and docs/proxy.md).

server     the listener: connections, limits, routing each request
forward    one request to LM Studio and its answer back; streams, retries, errors
answers    the proxy's own answers: OpenAI-shaped errors, metrics, 404s, the over-cap 503
classify   inference requests, the model a body names, event-stream answers, body limits
http1      HTTP/1.1 heads and bodies (pure);  wire  the sockets on both sides
origin     the Host and Origin checks (403);  hooks  what the proxy needs from the daemon
switching  the select-on-request gate
"""

from __future__ import annotations

from lmkeeperd.core.policy import Verdict
from lmkeeperd.proxy.answers import METRICS_PATH
from lmkeeperd.proxy.classify import is_inference, model_of
from lmkeeperd.proxy.hooks import ProxyHooks, ProxySettings, ProxyStats, SelectionError, Token
from lmkeeperd.proxy.server import ProxyServer
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
