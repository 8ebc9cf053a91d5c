"""The one place that assembles the daemon (uvicorn's `Config.load()` and `Server` as model).

`assemble(config, config_path)` builds every role and hands each its
collaborators through its constructor; nothing is patched onto an object after
it is built. The order follows what each needs:

    Liveness, InFlight, Journal, PendingCheck   plain state, shared
    Driver(build=...)                           the Host; calls `build` with itself:
      ServerView     ← journal, liveness, in_flight, pending/pins/estimates.listed
      Estimates, PinnedCheck (residency_feed.py: L25 estimates, pinned keys, L23)
      ActivityBridge ← liveness
      ProxyBridge    ← view
      Operations     ← view, journal, in_flight, activity.look, bridge.load_failed
      PressureWatch  ← ops.memory
      SelectionChecker ← view, pending, estimates.ensure
      StatusReporter ← view, ops, bridge, activity, the control server
      ControlHandler ← view, ops, checker, reporter.live
      ControlServer  ← handler
    Reloader         ← driver and the roles a reload changes
    Daemon           ← all of it: start, signals, stop (lifetime.py)

State files live in `state_dir` when given (the demo's temporary folder), else
in the user's state folder (paths.state_dir).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from lmkeeperd import paths
from lmkeeperd.config import Config
from lmkeeperd.control.server import ControlServer
from lmkeeperd.control.socket_record import Recorder
from lmkeeperd.daemon.activity_bridge import ActivityBridge
from lmkeeperd.daemon.context import Host
from lmkeeperd.daemon.control_handler import ControlHandler
from lmkeeperd.daemon.driver import Driver, Roles
from lmkeeperd.daemon.in_flight import InFlight
from lmkeeperd.daemon.journal import Journal
from lmkeeperd.daemon.lifetime import Daemon, Parts
from lmkeeperd.daemon.liveness import Liveness
from lmkeeperd.daemon.operations import Operations
from lmkeeperd.daemon.pressure import PressureWatch
from lmkeeperd.daemon.proxy_bridge import ProxyBridge
from lmkeeperd.daemon.reload import Reloader
from lmkeeperd.daemon.residency_feed import Estimates, PinnedCheck
from lmkeeperd.daemon.sdnotify import Notifier
from lmkeeperd.daemon.selection_check import PendingCheck, SelectionChecker
from lmkeeperd.daemon.server_view import ServerView
from lmkeeperd.daemon.status_snapshot import StatusReporter
from lmkeeperd.daemon.why import ConfigProblem


@dataclass(slots=True)
class _Built:
    """The roles `build` made, beyond the driver's own `Roles`."""

    view: ServerView | None = None
    checker: SelectionChecker | None = None
    reporter: StatusReporter | None = None
    pins: PinnedCheck | None = None
    estimates: Estimates | None = None


def assemble(
    config: Config,
    config_path: Path,
    *,
    clock: Callable[[], float] = time.monotonic,
    notifier: Notifier | None = None,
    hangup_stops: bool = False,
    state_dir: Path | None = None,
) -> Daemon:
    """Build the daemon for `config` (read from `config_path`), ready to `run()`."""
    notifier = notifier or Notifier.from_env()
    # State belongs to the daemon of this config file (paths.state_key).
    state_file = paths.selection_file(config_path)
    journal_path = paths.journal_file(config_path)
    if state_dir is not None:
        state_file, journal_path = state_dir / state_file.name, state_dir / journal_path.name
    journal = Journal(journal_path)
    liveness = Liveness()
    in_flight = InFlight()
    problem = ConfigProblem()  # `config_error` in status until fixed
    built = _Built()

    def build(host: Host) -> Roles:
        pending = PendingCheck(host, state_file=state_file)
        pins = PinnedCheck(host)
        ops_box: list[Operations] = []
        estimates = Estimates(host, memory=lambda: ops_box[0].memory)

        def listed(catalog: Collection[str]) -> None:
            pending.listed(catalog)
            pins.listed(catalog)
            estimates.listed(view.models)

        view = ServerView(
            host,
            config,
            journal=journal,
            liveness=liveness,
            in_flight=in_flight,
            on_listing=listed,
        )
        activity = ActivityBridge(host, config, liveness=liveness, clock=clock)
        bridge = ProxyBridge(host, view)
        ops = Operations(
            host,
            config,
            view=view,
            journal=journal,
            in_flight=in_flight,
            look=activity.look,
            on_load_failed=bridge.load_failed,
        )
        ops_box.append(ops)
        pressure = PressureWatch(host, memory=lambda: ops.memory)
        checker = SelectionChecker(
            host,
            view,
            pending,
            state_file=state_file,
            estimate=lambda key: estimates.ensure(key, view.models),
            look=activity.look_before_select,
        )
        control_box: list[ControlServer] = []
        reporter = StatusReporter(
            host,
            clock=clock,
            config_path=config_path,
            config_problem=problem,
            view=view,
            ops=ops,
            bridge=bridge,
            activity=activity,
            control=lambda: control_box[0] if control_box else None,
        )
        handler = ControlHandler(
            host, view, ops, state_file=state_file, status=reporter.live, checker=checker
        )
        control = ControlServer(
            paths.socket_path(config),
            handler,
            record=Recorder.for_config(config_path),  # the CLI's way here (cli/locate.py)
        )
        control_box.append(control)
        built.view, built.checker, built.reporter = view, checker, reporter
        built.pins, built.estimates = pins, estimates
        return Roles(
            ops=ops,
            bridge=bridge,
            activity=activity,
            pressure=pressure,
            handler=handler,
            control=control,
            journal=journal,
        )

    driver = Driver(config, clock=clock, notifier=notifier, build=build)
    roles = driver.roles
    assert built.view is not None and built.checker is not None and built.reporter is not None
    assert built.pins is not None and built.estimates is not None
    reloader = Reloader(
        driver,
        config_path=config_path,
        notifier=notifier,
        problem=problem,
        view=built.view,
        ops=roles.ops,
        activity=roles.activity,
        bridge=roles.bridge,
        checker=built.checker,
        pins=built.pins,
        estimates=built.estimates,
    )
    parts = Parts(
        driver=driver,
        view=built.view,
        ops=roles.ops,
        activity=roles.activity,
        bridge=roles.bridge,
        handler=roles.handler,
        checker=built.checker,
        reporter=built.reporter,
        reloader=reloader,
        journal=journal,
        notifier=notifier,
        clock=clock,
        state_file=state_file,
    )
    return Daemon(parts, config_path, hangup_stops=hangup_stops)
