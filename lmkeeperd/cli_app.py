"""The typer app behind `lmkeeperd` (see cli.py for the fast path in front of it)."""

from __future__ import annotations

from typing import Annotated

import typer

from lmkeeperd import commands

app = typer.Typer(
    name="lmkeeperd",
    help="Keeps the right local LLM loaded in LM Studio, and nothing else.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Work with the config file.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        envvar="LMKEEPERD_CONFIG",
        help="Config file (default: config.toml in the user config folder).",
        show_default=False,
    ),
]


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the daemon in the foreground (what systemd and launchd start)."""
    from lmkeeperd.daemon import run as run_daemon
    from lmkeeperd.paths import config_path

    raise typer.Exit(run_daemon(config_path(config)))


@app.command()
def status(
    config: ConfigOpt = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Show what the running daemon is doing (exit 3 when none runs)."""
    raise typer.Exit(commands.status(config, json))


@app.command()
def select(
    model: Annotated[str, typer.Argument(help="Model key, as `lms ls` shows it.")],
    config: ConfigOpt = None,
) -> None:
    """Select a model, as a client would."""
    raise typer.Exit(commands.select(config, model))


@app.command()
def unload(
    model: Annotated[
        str | None, typer.Argument(help="Model to unload (default: the current one).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Unload the current model now, or the named one even if lmkeeperd did not load it."""
    raise typer.Exit(commands.unload(config, model))


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate a config file; print each problem with its key (exit 2 when invalid)."""
    raise typer.Exit(commands.config_check(config))


@app.command()
def estimate(
    model: Annotated[str, typer.Argument(help="Model key, as `lms ls` shows it.")],
    context: Annotated[
        int | None, typer.Option("--context", help="Context length to estimate for.")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    config: ConfigOpt = None,
) -> None:
    """What a model would need (weights, KV cache, overhead) and whether it fits."""
    from lmkeeperd.estimate_cmd import run as run_estimate

    raise typer.Exit(run_estimate(config, model, context, json))


@app.command()
def demo(
    idle_timeout: Annotated[
        str, typer.Option(help="Idle eject after this long, to watch it happen.")
    ] = "60s",
    load_delay: Annotated[float, typer.Option(help="Seconds each emulated load takes.")] = 2.0,
) -> None:
    """Run the bundled LM Studio emulator and the daemon against it: no LM Studio needed."""
    from lmkeeperd.demo import run_demo

    raise typer.Exit(run_demo(idle_timeout=idle_timeout, load_delay=load_delay))


def _mount_service() -> None:
    from lmkeeperd.service.cli import service_app

    app.add_typer(service_app, name="service")


_mount_service()
