"""`service status`: whether the service is installed, enabled and running, and its text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lmkeeperd.errors import ServiceManagerUnavailable
from lmkeeperd.service import render
from lmkeeperd.service.execute import CommandRunner, check_manager, run_command
from lmkeeperd.service.plan import has_marker, read_text
from lmkeeperd.service.target import Target


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    target: Target
    installed: bool
    installed_by_us: bool
    enabled: bool | None  # None: the manager could not be asked
    running: bool | None
    detail: dict[str, str] = field(default_factory=dict)  # the manager's own words
    problem: str | None = None  # why the manager could not be asked, in full
    reason: str | None = None  # the same, short


def query_status(target: Target, runner: CommandRunner = run_command) -> ServiceStatus:
    """Whether the service is installed, enabled and running; asks the manager."""
    text = read_text(target.service_file)
    installed = text is not None
    ours = installed and has_marker(render.parse_install_records(text or ""))
    try:
        check_manager(target, runner)
    except ServiceManagerUnavailable as exc:
        # Not installed means not enabled; whether an lmkeeperd runs, only the manager knows.
        known: bool | None = None if installed else False
        return ServiceStatus(
            target, installed, ours, known, None, problem=str(exc), reason=exc.reason
        )
    if not installed:
        return ServiceStatus(target, installed, ours, enabled=False, running=False)
    if target.platform == "darwin":
        return _launchd_status(target, runner, installed, ours)
    manager = target.manager_argv
    enabled = runner((*manager, "is-enabled", render.UNIT_NAME)).stdout.strip()
    active = runner((*manager, "is-active", render.UNIT_NAME)).stdout.strip()
    return ServiceStatus(
        target,
        installed,
        ours,
        enabled=enabled in ("enabled", "enabled-runtime", "linked", "alias"),
        running=active in ("active", "reloading"),
        detail={"is-enabled": enabled or "not-found", "is-active": active or "unknown"},
    )


def _launchd_status(
    target: Target, runner: CommandRunner, installed: bool, ours: bool
) -> ServiceStatus:
    printed = runner(("launchctl", "print", target.launchd_service))
    loaded = printed.returncode == 0
    state_match = re.search(r"^\s*state = (\S+)", printed.stdout, re.MULTILINE)
    state = state_match.group(1) if loaded and state_match else "not loaded"
    disabled_list = runner(("launchctl", "print-disabled", target.launchd_domain)).stdout
    # Older macOS prints `"label" => true` for disabled, newer `=> disabled`.
    disabled = re.search(
        rf'"{re.escape(render.LAUNCHD_LABEL)}"\s*=>\s*(true|disabled)\b', disabled_list
    )
    return ServiceStatus(
        target,
        installed,
        ours,
        # A LaunchAgent in ~/Library/LaunchAgents loads at every login unless disabled.
        enabled=installed and disabled is None,
        running=state == "running",
        detail={"state": state},
    )


def format_status(status: ServiceStatus) -> str:
    target = status.target
    if not status.installed:
        where = f"not installed ({target.service_file} does not exist)"
    elif status.installed_by_us:
        where = f"installed: {target.service_file}"
    else:
        where = f"installed by hand (not by `service install`): {target.service_file}"
    lines = [f"lmkeeperd {target.describe()}", f"  file:    {where}"]
    if status.problem is not None:
        why = f" ({status.reason})"
        lines.append(f"  enabled: {_yes_no(status.enabled)}{why if status.enabled is None else ''}")
        lines.append(f"  running: unknown{why}")
        return "\n".join(lines)
    detail = ", ".join(f"{key}: {value}" for key, value in status.detail.items())
    lines.append(f"  enabled: {_yes_no(status.enabled)}")
    lines.append(f"  running: {_yes_no(status.running)}" + (f" ({detail})" if detail else ""))
    if status.installed:
        lines.append(f"  logs:    {target.log_command()}")
    return "\n".join(lines)


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")
