"""Reload policy: what a changed config file (or SIGHUP) changes in the running daemon.

An invalid, empty or vanished file keeps the last good config running
(config_file.py says why). A good one replaces the config as a whole: logging,
the server's client and the activity watcher, the proxy's settings and the
core's settings apply at once; the listeners and the control socket need a
restart (`config_needs_restart`). A changed `[model] selected` is a selection,
checked against the catalog first (L23).
"""

from __future__ import annotations

from pathlib import Path

import structlog

import lmkeeperd.daemon.selection as selection
from lmkeeperd import logs
from lmkeeperd.daemon.activity_bridge import ActivityBridge
from lmkeeperd.daemon.config_file import ConfigReader
from lmkeeperd.daemon.driver import Driver
from lmkeeperd.daemon.operations import Operations
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.residency_feed import Estimates, PinnedCheck
from lmkeeperd.daemon.sdnotify import Notifier
from lmkeeperd.daemon.selection_check import SelectionChecker
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.daemon.why import ConfigProblem

log = structlog.get_logger()


class Reloader:
    """Applies a re-read config file; owns the reader of that file."""

    def __init__(
        self,
        driver: Driver,
        *,
        config_path: Path,
        notifier: Notifier,
        problem: ConfigProblem,
        view: ServerView,
        ops: Operations,
        activity: ActivityBridge,
        bridge: ProxyBridge,
        checker: SelectionChecker,
        pins: PinnedCheck,
        estimates: Estimates,
    ) -> None:
        self._driver = driver
        self._config_path = config_path
        self._notifier = notifier
        self._problem = problem
        self._view = view
        self._ops = ops
        self._activity = activity
        self._bridge = bridge
        self._checker = checker
        self._pins = pins
        self._estimates = estimates
        self.reader = ConfigReader(
            config_path,
            driver.announce,
            lambda: self.reload("file"),
            on_invalid=lambda e: problem.failed(str(config_path), e),
        )

    def reload(self, source: str) -> None:
        """Re-read the config; an invalid, empty or vanished one keeps the last good running."""
        driver, path = self._driver, self._config_path
        self._notifier.reloading()
        new = self.reader.read()  # None: the reader said why the file is not applied
        if new is None:
            self._notifier.ready(driver.status_line())
            return
        was = self._problem.fixed()
        if was is not None:
            driver.announce("config_fixed", {"path": str(path), "was": was["message"]})
        old = driver.config
        driver.use_config(new)
        if new == old and source == "file":
            self._notifier.ready(driver.status_line())
            return  # touched, not changed
        if new.log != old.log:
            logs.setup(new.log.level, new.log.format)
        self._view.configure(old, new)
        self._ops.configure(new)
        self._activity.configure(old, new)
        if new.control != old.control:
            log.warning("config_needs_restart", key="control.socket")
        for key, before, after in (
            ("proxy.listen", old.proxy.listen, new.proxy.listen),
            ("metrics.listen", old.metrics.listen, new.metrics.listen),
        ):
            if before != after:
                log.warning("config_needs_restart", key=key)
        self._bridge.configure(old, new)
        if new.model != old.model or new.memory != old.memory:
            self._estimates.forget()  # context, draft or models folder may have changed
            self._pins.reconfigured()
            self._estimates.listed(self._view.models)
        # Pinned to what the catalog lists (L23); unknown pinned keys are reported when
        # the next listing comes (residency_feed.py).
        driver.feed(self._pins.settings_for(new))
        driver.announce("config_reloaded", {"path": str(path), "source": source})
        if new.model.selected != old.model.selected and new.model.selected.strip():
            # A changed `selected` is a selection, and the newest one: it replaces what an
            # older socket selection stored, or a restart would bring that one back. Checked
            # against the catalog first (L23): an unknown key changes nothing.
            key = new.model.selected.strip()
            selection.received(key, "config", path=str(path))
            stored = selection.StoredSelection(key, new.model.selected)
            driver.spawn(self._checker.select_quietly(key, source="config", store=stored))
        self._notifier.ready(driver.status_line())
