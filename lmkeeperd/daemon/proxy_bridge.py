"""The daemon's side of the proxy: its hooks, the switch gate, the listeners, metrics.

The proxy (lmkeeperd/proxy/) never touches the core. It calls the hooks here
(`ProxyHooks`): activity, streams opening and closing, and `stream_for` for
select-on-request, which goes through the `SwitchGate`. The gate asks this
bridge (`SwitchWorld`) for verdicts, decided in the pure core
(`lmkeeperd.core.policy.proxy_verdict`), and returns the work it wants done;
the driver performs that work after each event (`Driver.feed`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from lmkeeperd import __version__
from lmkeeperd.config import Config, is_loopback, split_listen
from lmkeeperd.core import Activity, StreamEnded, StreamStarted, Verdict, proxy_verdict
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.metrics import Metrics, Snapshot
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.daemon.wiring import proxy_settings
from lmkeeperd.proxy import GateWork, ProxyServer, SwitchGate
from lmkeeperd.status_types import MetricsStatus, ProxyStatus

log = structlog.get_logger()


class ProxyBridge:
    """`ProxyHooks` and `SwitchWorld` for the daemon; owns the proxy and metrics listeners."""

    def __init__(self, host: Host, view: ServerView) -> None:
        self._host = host
        self._view = view
        self._started_wall = time.time()
        self.metrics = Metrics()
        self._gate = SwitchGate(self)  # select-on-request (lmkeeperd/proxy/switching.py)
        self._proxy: ProxyServer | None = None
        self._metrics_listener: ProxyServer | None = None

    # --- ProxyHooks -----------------------------------------------------------

    def activity(self, model: str | None = None) -> None:
        self._host.feed(Activity(model))

    def stream_opened(self, model: str | None = None) -> int:
        stream = self._host.next_stream()
        log.debug("stream_opened", stream=stream, conn="proxy", model=model)
        self._host.feed(StreamStarted(stream, model))
        return stream

    def stream_closed(self, stream: int) -> None:
        self._host.feed(StreamEnded(stream))

    async def stream_for(self, model: str, *, max_wait: float) -> int:
        return await self._gate.stream_for(model, max_wait=max_wait)

    # --- SwitchWorld ----------------------------------------------------------

    def verdict(self, model: str) -> Verdict:
        core = self._host.core
        if model != core.model and any(
            r.model == model and r.state == "loaded" for r in core.residents_view()
        ):
            # L24: a resident model answers as it is: straight through, no switch, its
            # stream counted for it (`stream_opened(model)`).
            return Verdict.PASS
        return proxy_verdict(core, model, self._view.model_type(model))

    def selected_model(self) -> str | None:
        return self._host.core.selected

    def gate_moved(self) -> None:
        self._host.settle()

    # --- for the driver ---------------------------------------------------------

    def gate_work(self) -> list[GateWork]:
        """What the switch gate wants done after the event just handled."""
        return self._gate.changed()

    def count(self, name: str, fields: Mapping[str, Any]) -> None:
        """An announced event, for the metrics."""
        self.metrics.observe(name, fields)

    def load_failed(self, model: str, error: str) -> None:
        """A load the core waited for failed (operations.py): the gate's waiters hear it."""
        self._gate.load_failed(model, error)
        self._host.settle()  # the gate acts on it at its next pass

    def metrics_text(self) -> str:
        core = self._host.core
        return self.metrics.render(
            Snapshot(
                version=__version__,
                state=core.state.value,
                model=core.model,
                selected=core.selected,
                active_streams=core.active_streams,
                server_reachable=self._view.reachable,
                start_time=self._started_wall,
                proxy=self._proxy.stats if self._proxy is not None else None,
                proxy_switches=self._gate.selections,
                residents=tuple(
                    (r.model, None if r.estimate_gb is None else r.estimate_gb * 1e9, r.pinned)
                    for r in core.residents_view()
                ),
                budget_bytes=(
                    None if core.settings.budget_gb is None else core.settings.budget_gb * 1e9
                ),
                budget_used_bytes=core.budget_used_gb() * 1e9,
            )
        )

    async def start_listeners(self) -> None:
        """The proxy and the metrics listener, as configured; raises DaemonError."""
        config = self._host.config
        if config.proxy.listen:
            host, port = split_listen(config.proxy.listen)
            settings = proxy_settings(config)
            self._proxy = ProxyServer(
                host, port, metrics=self.metrics_text, hooks=self, settings=settings
            )
            await self._proxy.start()
            log.info("proxy_listening", address=self._proxy.address, upstream=settings.upstream)
            if not is_loopback(host):
                advice = "other machines can reach LM Studio through it"
                log.warning("proxy_exposed", address=self._proxy.address, advice=advice)
            if settings.inject_token and settings.token is None:
                env = config.server.api_token_env
                log.warning("proxy_token_missing", env=env, advice=f"set {env} to inject a token")
        if config.metrics.listen:
            host, port = split_listen(config.metrics.listen)
            self._metrics_listener = ProxyServer(host, port, metrics=self.metrics_text)
            await self._metrics_listener.start()
            log.info("metrics_listening", address=self._metrics_listener.address)
            if not is_loopback(host):
                log.warning("metrics_exposed", address=self._metrics_listener.address)

    def configure(self, old: Config, new: Config) -> None:
        """A reloaded config: the proxy forwards with the new settings."""
        if self._proxy is not None and (new.server, new.proxy) != (old.server, old.proxy):
            self._proxy.configure(proxy_settings(new))

    def stop_accepting(self) -> None:
        for listener in (self._proxy, self._metrics_listener):
            if listener is not None:
                listener.stop_accepting()  # requests under way finish while we unload

    async def close_listeners(self) -> None:
        for listener in (self._proxy, self._metrics_listener):
            if listener is not None:
                await listener.close()

    # --- status -----------------------------------------------------------------

    def proxy_status(self) -> ProxyStatus | None:
        proxy = self._proxy
        if proxy is None:
            return None
        stats, settings = proxy.stats, proxy.settings
        last = stats.last_request_wall
        return {
            "listen": proxy.address,
            "requests_in_flight": stats.in_flight,
            "streams_open": stats.streams_open,
            "requests_total": stats.requests_total,
            "waiting_for_switch": self._gate.waiting,
            "last_request_at": None
            if last is None
            else datetime.fromtimestamp(last, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "last_request_ago_s": None if last is None else round(time.time() - last, 1),
            "select_on_request": settings is not None and settings.select_on_request,
        }

    def metrics_status(self) -> MetricsStatus | None:
        listener = self._metrics_listener
        return None if listener is None else {"listen": listener.address}
