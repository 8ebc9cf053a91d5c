"""Every `lmkeeperd` command in one table: names, arguments, options, help, handler.

The parser (cli/parser.py) is generated from this table and nothing else, so an
option is added here once: its flag, its help, its type, and the handler's
keyword that receives it. A handler is named as "module:function" and imported
only when its command runs, so `lmkeeperd status` never imports the daemon, the
emulator or the service installer. Each handler takes the command's options and
arguments as keywords (their `dest` names) and returns the exit code;
tests/cli/test_cli_table.py checks every handler's signature against its row.

Standard library only, and nothing slow: this module is imported on every call.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    Kind: TypeAlias = Literal["flag", "str", "int", "float"]


# Plain classes, not NamedTuple or dataclasses: those cost milliseconds to import
# or to build, and this module is imported on every call (bench/bench_status_cli.py).
class Opt:
    """An option: `--flag VALUE`, or a bare `--flag` when kind is "flag"."""

    __slots__ = ("default", "dest", "flag", "help", "hidden", "kind", "metavar")

    def __init__(
        self,
        flag: str,
        help: str,
        kind: Kind = "str",
        metavar: str | None = None,
        default: str | int | float | bool | None = None,
        *,
        hidden: bool = False,  # for tests only; left out of --help
        keyword: str | None = None,  # the handler's parameter, when not the flag's name
    ) -> None:
        self.flag = flag
        self.help = help
        self.kind = kind
        self.metavar = metavar
        self.default = False if kind == "flag" else default
        self.hidden = hidden
        self.dest = keyword or flag.lstrip("-").replace("-", "_")


class Arg:
    """A positional argument; `optional` ones may be left out (then None)."""

    __slots__ = ("dest", "help", "metavar", "optional")

    def __init__(self, dest: str, metavar: str, help: str, optional: bool = False) -> None:
        self.dest = dest
        self.metavar = metavar
        self.help = help
        self.optional = optional


class Command:
    __slots__ = ("args", "handler", "help", "hidden", "name", "opts")

    def __init__(
        self,
        name: str,
        help: str,  # the first line is the summary in the command list
        handler: str,  # "module:function", imported when the command runs
        args: tuple[Arg, ...] = (),
        opts: tuple[Opt, ...] = (),
        *,
        hidden: bool = False,  # left out of --help and of the completions (a helper)
    ) -> None:
        self.name = name
        self.help = help
        self.handler = handler
        self.args = args
        self.opts = opts
        self.hidden = hidden


class Group:
    """Commands under a common word: `lmkeeperd service install`."""

    __slots__ = ("commands", "help", "name")

    def __init__(self, name: str, help: str, commands: tuple[Command, ...]) -> None:
        self.name = name
        self.help = help
        self.commands = commands


PROG = "lmkeeperd"
DESCRIPTION = "Keeps the right local LLM loaded in LM Studio, and nothing else."
# Every error the CLI prints starts so, argparse's usage errors and the service
# commands' included: one prefix for people and for scripts to grep.
ERROR_PREFIX = f"{PROG}: error: "

# The client commands find the daemon's socket through the config; the option falls
# back to $LMKEEPERD_CONFIG and then the default file (paths.config_path) in the
# handler, so every command reads the environment variable in the same place.
CONFIG = Opt(
    "--config",
    "Config file (default: $LMKEEPERD_CONFIG, else config.toml in the user config folder).",
    metavar="PATH",
)
JSON = Opt("--json", "One JSON object.", "flag", keyword="as_json")
MODEL = Arg("model", "MODEL", "Model key, as `lms ls` shows it.")

_SERVICE = "lmkeeperd.cli.service"
# The hidden command the completion scripts run for a MODEL argument.
COMPLETE_MODELS = "_complete-models"
SYSTEM = Opt(
    "--system",
    "A system unit that starts at boot (Linux, needs sudo), instead of a user service.",
    "flag",
)
DRY_RUN = Opt("--dry-run", "Print the files and commands; change nothing.", "flag")
# Tests render the other platform's service on this one.
PLATFORM = Opt("--platform", "linux or darwin", hidden=True)

COMMANDS: tuple[Command | Group, ...] = (
    Command(
        "run",
        "Run the daemon in the foreground (what systemd and launchd start).",
        "lmkeeperd.cli.commands:run",
        opts=(CONFIG,),
    ),
    Command(
        "status",
        "Show what the running daemon is doing (exit 3 when none runs).",
        "lmkeeperd.cli.commands:status",
        opts=(CONFIG, JSON),
    ),
    Command(
        "select",
        "Select a model, as a client would.",
        "lmkeeperd.cli.commands:select",
        args=(MODEL,),
        opts=(
            Opt(
                "--wait",
                "Wait until the model is loaded (exit 0) or its load failed (exit 1).",
                "flag",
            ),
            Opt(
                "--timeout",
                "With --wait: give up after this long (exit 1). Default: no limit.",
                metavar="DURATION",
            ),
            Opt(
                "--keep-alive",
                'Idle timeout for this selection only ("0" never ejects), '
                "instead of [model] idle_timeout. Selecting the same model again without it "
                'keeps the earlier one; "default" drops it.',
                metavar="DURATION",
            ),
            CONFIG,
        ),
    ),
    Command(
        "unload",
        "Unload the current model now, or the named one even if lmkeeperd did not load it.",
        "lmkeeperd.cli.commands:unload",
        args=(Arg("model", "MODEL", "Model to unload (default: the current one).", True),),
        opts=(CONFIG,),
    ),
    Command(
        "models",
        "The server's models: size, quantization, who loaded each instance, whether it fits.",
        "lmkeeperd.cli.listing:models",
        opts=(CONFIG, JSON),
    ),
    Command(
        "events",
        "Follow the daemon's events live (JSON lines when not on a terminal, or with --json).",
        "lmkeeperd.cli.listing:events",
        opts=(CONFIG, Opt("--json", "JSON lines, even on a terminal.", "flag", keyword="as_json")),
    ),
    Command(
        "estimate",
        "What a model would need (weights, KV cache, overhead) and whether it fits.",
        "lmkeeperd.cli.estimate:run",
        args=(MODEL,),
        opts=(
            Opt("--context", "Context length to estimate for.", "int", metavar="TOKENS"),
            JSON,
            CONFIG,
        ),
    ),
    Command(
        "demo",
        "Run the bundled LM Studio emulator and the daemon against it: no LM Studio needed.",
        "lmkeeperd.cli.demo:run_demo",
        opts=(
            Opt(
                "--idle-timeout",
                "Idle eject after this long, to watch it happen.",
                metavar="DURATION",
                default="60s",
            ),
            Opt("--load-delay", "Seconds each emulated load takes.", "float", "SECONDS", 2.0),
        ),
    ),
    Command(
        "completion",
        "Print the shell completion script for bash, zsh or fish.\n\n"
        "Install it once, e.g. for bash:\n"
        "  lmkeeperd completion bash > ~/.local/share/bash-completion/completions/lmkeeperd\n"
        "zsh:  lmkeeperd completion zsh > ~/.lmkeeperd-completion.zsh\n"
        "      and `source ~/.lmkeeperd-completion.zsh` in ~/.zshrc\n"
        "fish: lmkeeperd completion fish > ~/.config/fish/completions/lmkeeperd.fish",
        "lmkeeperd.cli.completion:script",
        args=(Arg("shell", "SHELL", "bash, zsh or fish"),),
    ),
    Command(
        COMPLETE_MODELS,
        "The model keys the running daemon knows, one a line; nothing when none runs.",
        "lmkeeperd.cli.completion:models",
        opts=(CONFIG,),
        hidden=True,
    ),
    Group(
        "config",
        "Work with the config file.",
        (
            Command(
                "check",
                "Validate a config file; print each problem with its key (exit 2 when invalid).",
                "lmkeeperd.cli.commands:config_check",
                opts=(CONFIG,),
            ),
        ),
    ),
    Group(
        "service",
        "Run lmkeeperd as a systemd (Linux) or launchd (macOS) service.",
        (
            Command(
                "install",
                "Install, enable and start lmkeeperd as a service of this installation.",
                f"{_SERVICE}:install",
                opts=(
                    SYSTEM,
                    DRY_RUN,
                    Opt(
                        "--config",
                        "Config file the service uses (default: the user config folder's "
                        "config.toml, or /etc/lmkeeperd/config.toml with --system).",
                        metavar="PATH",
                    ),
                    Opt(
                        "--run-as",
                        "With --system: the user the daemon runs as "
                        "(default: the user who ran sudo).",
                        metavar="USER",
                    ),
                    PLATFORM,
                ),
            ),
            Command(
                "uninstall",
                "Stop and disable the service, and remove what `service install` wrote.",
                f"{_SERVICE}:uninstall",
                opts=(SYSTEM, DRY_RUN, PLATFORM),
            ),
            Command(
                "status",
                "Tell whether the service is installed, enabled and running.",
                f"{_SERVICE}:status",
                opts=(SYSTEM, PLATFORM),
            ),
        ),
    ),
)


def find(words: list[str]) -> tuple[Command, int] | None:
    """The command `words` start with, and how many words name it; None if none does."""
    for entry in COMMANDS:
        if not words or entry.name != words[0]:
            continue
        if isinstance(entry, Command):
            return entry, 1
        for command in entry.commands:
            if len(words) > 1 and command.name == words[1]:
                return command, 2
    return None
