"""`lmkeeperd service install | uninstall | status`: parse, call `manage`, print.

The main CLI mounts `service_app` with `app.add_typer(service_app, name="service")`.
Exit codes follow the rest of the CLI: 0 done (for `status`: running), 1 the
service manager refused or is unreachable, 2 bad usage, 3 (`status` only)
installed but not running, or not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer

from lmkeeperd.service import manage
from lmkeeperd.service.render import Scope

T = TypeVar("T")

service_app = typer.Typer(
    name="service",
    help="Run lmkeeperd as a systemd (Linux) or launchd (macOS) service.",
    no_args_is_help=True,
    add_completion=False,
)

SystemOption = Annotated[
    bool,
    typer.Option(
        "--system",
        help="A system unit that starts at boot (Linux, needs sudo), instead of a user service.",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the files and commands; change nothing.")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Config file the service uses (default: the user config folder's config.toml, "
        "or /etc/lmkeeperd/config.toml with --system).",
    ),
]
RunAsOption = Annotated[
    str | None,
    typer.Option(
        "--run-as",
        help="With --system: the user the daemon runs as (default: the user who ran sudo).",
    ),
]
# Tests render the other platform's service on this one.
PlatformOption = Annotated[
    str | None, typer.Option("--platform", hidden=True, help="linux or darwin")
]


@service_app.command()
def install(
    system: SystemOption = False,
    dry_run: DryRunOption = False,
    config: ConfigOption = None,
    run_as: RunAsOption = None,
    platform: PlatformOption = None,
) -> None:
    """Install, enable and start lmkeeperd as a service of this installation."""
    target = _target(platform, system, config, run_as)
    plan = _or_exit(lambda: manage.plan_install(target, manage.example_config()))
    _carry_out(plan, dry_run)


@service_app.command()
def uninstall(
    system: SystemOption = False,
    dry_run: DryRunOption = False,
    platform: PlatformOption = None,
) -> None:
    """Stop and disable the service, and remove what `service install` wrote."""
    target = _target(platform, system, None, None)
    plan = _or_exit(lambda: manage.plan_uninstall(target))
    _carry_out(plan, dry_run)


@service_app.command()
def status(
    system: SystemOption = False,
    platform: PlatformOption = None,
) -> None:
    """Tell whether the service is installed, enabled and running."""
    target = _target(platform, system, None, None)
    result = manage.query_status(target)
    typer.echo(manage.format_status(result))
    if result.running is None:
        raise typer.Exit(1)
    if not result.running:
        raise typer.Exit(3)


def _target(
    platform: str | None, system: bool, config: Path | None, run_as: str | None
) -> manage.Target:
    scope: Scope = "system" if system else "user"
    return _or_exit(
        lambda: manage.resolve_target(
            manage.Host.current(),
            _platform(platform),
            scope,
            config=config,
            run_as=run_as,
        )
    )


def _platform(value: str | None) -> manage.Platform:
    if value is None:
        return manage.current_platform()
    if value not in ("linux", "darwin"):
        raise manage.UnsupportedPlatform(f"--platform must be linux or darwin, not {value!r}")
    chosen: Literal["linux", "darwin"] = "linux" if value == "linux" else "darwin"
    return chosen


def _carry_out(plan: manage.Plan, dry_run: bool) -> None:
    if dry_run:
        typer.echo(manage.format_plan(plan))
        return

    def run() -> None:
        manage.check_privileges(plan.target, manage.Host.current().euid)
        if plan.steps:
            manage.check_manager(plan.target)
        manage.execute(plan, report=typer.echo)

    _or_exit(run)
    if plan.notes:
        typer.echo("")
        typer.echo("\n".join(plan.notes))


def _or_exit(action: Callable[[], T]) -> T:
    try:
        return action()
    except manage.ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from exc
    except OSError as exc:  # a folder we may not write, a full disk
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
