"""What the proxy needs from the daemon, and what it keeps about itself.

The proxy never touches the lifecycle core. It tells the daemon what it sees
through `ProxyHooks` (activity, streams opening and closing, a model a request
needs), so it can be tested with a fake and end to end with the real daemon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

# Re-exported: the proxy's modules and its users import it from here.
from lmkeeperd.errors import SelectionError as SelectionError
from lmkeeperd.secret import Secret

# The proxy's name for the API token: the same class the LM Studio client holds it in.
Token = Secret


class ProxyHooks(Protocol):
    """The daemon's side of the proxy."""

    def activity(self, model: str | None = None) -> None:
        """A request went through (lifecycle L10), for `model` when its body names one (L24)."""
        ...

    def stream_opened(self, model: str | None = None) -> int:
        """A request now pins `model` (None: the current model) (L7-L9, L24); its stream id."""
        ...

    def stream_closed(self, stream: int) -> None:
        """The stream `stream_opened` or `stream_for` returned has ended."""
        ...

    async def stream_for(self, model: str, *, max_wait: float) -> int:
        """Make `model` the loaded model if needed, then open a stream on it.

        A model other than the current one is a selection: this waits (at most
        `max_wait` seconds) for requests in flight on the current model to end
        and for the switch to finish. The stream is opened in the same step in
        which the model is seen loaded, so nothing can unload it in between.
        Models the daemon cannot or should not switch to (unknown to the server,
        embedding models, hands-off) get a stream at once and no selection.
        Raises `SelectionError`.
        """
        ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """How requests are forwarded; replaced as a whole when the config is reloaded."""

    upstream: str  # [server] url, e.g. "http://127.0.0.1:1234"
    select_on_request: bool = False
    inject_token: bool = False
    token: Secret | None = None  # from the env var [server] api_token_env
    connect_timeout: float = 10.0  # [server] request_timeout
    # [server] load_timeout: the longest LM Studio may stay silent, before its
    # answer (a JIT load, a long prompt) or between two chunks of it.
    read_timeout: float = 600.0


@dataclass(slots=True)
class ProxyStats:
    """Counters and gauges of one proxy listener (status and metrics read them)."""

    requests_total: int = 0
    in_flight: int = 0
    streams_open: int = 0
    responses: dict[str, int] = field(default_factory=dict)  # "2xx".."5xx", "aborted"
    upstream_errors: int = 0
    last_request_wall: float | None = None  # time.time() of the latest request

    def request_started(self) -> None:
        self.requests_total += 1
        self.in_flight += 1
        self.last_request_wall = time.time()

    def request_ended(self, outcome: str) -> None:
        self.in_flight -= 1
        self.responses[outcome] = self.responses.get(outcome, 0) + 1
