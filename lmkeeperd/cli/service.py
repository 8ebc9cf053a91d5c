"""`lmkeeperd service install | uninstall | status`: parse (cli/table.py), plan, carry out, print.

Exit codes follow the rest of the CLI: 0 done (for `status`: running), 1 the
service manager refused or is unreachable, 2 bad usage, 3 (`status` only)
installed but not running, or not installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from lmkeeperd.cli.output import error, warning
from lmkeeperd.errors import ServiceError, ServiceManagerUnavailable, UnsupportedPlatform
from lmkeeperd.service import execute, plan, target
from lmkeeperd.service import unit_status as service_status
from lmkeeperd.service.render import Scope

T = TypeVar("T")


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def install(
    system: bool = False,
    dry_run: bool = False,
    config: str | None = None,
    run_as: str | None = None,
    platform: str | None = None,
) -> int:
    """Install, enable and start lmkeeperd as a service of this installation."""
    try:
        chosen = _target(platform, system, Path(config) if config else None, run_as)
        _warn_if_temporary(chosen, named=config is not None)
        steps = _or_exit(lambda: plan.plan_install(chosen, plan.example_config()))
        return _carry_out(steps, dry_run)
    except _Exit as e:
        return e.code


def uninstall(system: bool = False, dry_run: bool = False, platform: str | None = None) -> int:
    """Stop and disable the service, and remove what `service install` wrote."""
    try:
        chosen = _target(platform, system, None, None)
        steps = _or_exit(lambda: plan.plan_uninstall(chosen))
        return _carry_out(steps, dry_run)
    except _Exit as e:
        return e.code


def status(system: bool = False, platform: str | None = None) -> int:
    """Tell whether the service is installed, enabled and running."""
    try:
        chosen = _target(platform, system, None, None)
    except _Exit as e:
        return e.code
    result = service_status.query_status(chosen)
    print(service_status.format_status(result))
    if result.running is None:
        warning(result.problem or "the service manager cannot be reached")
        return 1
    return 0 if result.running else 3


def _warn_if_temporary(chosen: target.Target, *, named: bool) -> None:
    """A service outlives a temporary config file named on purpose (`--config`, or the
    demo's, which it exports as $LMKEEPERD_CONFIG in its shell)."""
    from_env = not named and bool(os.environ.get("LMKEEPERD_CONFIG", "").strip())
    folder = target.temporary_folder(chosen.config_path) if named or from_env else None
    if folder is None:
        return
    source = "--config" if named else "$LMKEEPERD_CONFIG"
    warning(
        f"the service's config file {chosen.config_path} ({source}) is under the temporary "
        f"folder {folder}, which may be emptied at any reboot; the service would then run "
        "on every default. Pass --config with a lasting path"
        + (", or unset LMKEEPERD_CONFIG (`lmkeeperd demo` sets it)" if from_env else "")
    )


def _target(
    platform: str | None, system: bool, config: Path | None, run_as: str | None
) -> target.Target:
    scope: Scope = "system" if system else "user"
    return _or_exit(
        lambda: target.resolve_target(
            target.Host.current(), _platform(platform), scope, config=config, run_as=run_as
        )
    )


def _platform(value: str | None) -> target.Platform:
    if value is None:
        return target.current_platform()
    if value not in ("linux", "darwin"):
        raise UnsupportedPlatform(f"--platform must be linux or darwin, not {value!r}")
    chosen: Literal["linux", "darwin"] = "linux" if value == "linux" else "darwin"
    return chosen


def _carry_out(steps: plan.Plan, dry_run: bool) -> int:
    if dry_run:
        print(plan.format_plan(steps))
        try:
            execute.check_manager(steps.target)
        except ServiceManagerUnavailable as exc:
            # A dry run changes nothing, but should not promise what would fail here.
            print(f"\nservice manager: unknown ({exc.reason})")
            warning(f"the real run would fail here: {exc}")
        return 0

    def run() -> None:
        execute.check_privileges(steps.target, target.Host.current().euid)
        if steps.steps:
            execute.check_manager(steps.target)
        execute.execute(steps, report=print)

    _or_exit(run)
    if steps.notes:
        print("")
        print("\n".join(steps.notes))
    return 0


def _or_exit(action: Callable[[], T]) -> T:
    try:
        return action()
    except ServiceError as exc:
        error(str(exc))
        raise _Exit(exc.exit_code) from exc
    except OSError as exc:  # a folder we may not write, a full disk
        error(str(exc))
        raise _Exit(1) from exc
