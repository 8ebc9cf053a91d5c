"""Which service lmkeeperd installs where: the machine's facts and the target they decide.

`Host.current()` reads this machine and user (home, uids, $SUDO_USER, the XDG
and $LMKEEPERD_CONFIG variables, the command that started us); `resolve_target`
turns a host, a platform and a scope (user or system) into a `Target`: the
service file, config, env file and log paths, and the manager command. Reading
only: nothing here changes the machine.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from lmkeeperd.errors import ServiceError, UnsupportedPlatform, WrongUser
from lmkeeperd.paths import APP_NAME
from lmkeeperd.service import render
from lmkeeperd.service.render import Scope

Platform: TypeAlias = Literal["linux", "darwin"]

LOG_FILE_NAME = "lmkeeperd.log"


@dataclass(frozen=True, slots=True)
class Host:
    """The facts about this machine and user that decide paths and checks."""

    home: Path
    uid: int
    euid: int
    user: str
    exec_argv: tuple[str, ...]
    sudo_user: str | None = None
    xdg_config_home: Path | None = None
    config_env: Path | None = None  # $LMKEEPERD_CONFIG

    @classmethod
    def current(cls) -> Host:
        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = os.environ.get("USER", str(uid))
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        config_env = os.environ.get("LMKEEPERD_CONFIG", "").strip()
        return cls(
            home=Path.home(),
            uid=uid,
            euid=os.geteuid(),
            user=user,
            exec_argv=installed_command(),
            sudo_user=os.environ.get("SUDO_USER") or None,
            # The XDG spec says to ignore a relative value, as systemd does.
            xdg_config_home=Path(xdg) if xdg and Path(xdg).is_absolute() else None,
            config_env=Path(config_env).expanduser().absolute() if config_env else None,
        )


def installed_command(argv0: str | None = None, executable: str | None = None) -> tuple[str, ...]:
    """The command that starts this installation of lmkeeperd, as absolute paths.

    The console script when we were started through it; else the script next
    to the interpreter (a venv's or pipx's bin folder); else `python -m`.
    Paths are made absolute but symlinks are kept: a venv's `python` is a
    symlink to the base interpreter, and resolving it would leave the venv.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    if Path(argv0).name == APP_NAME:
        found = shutil.which(argv0) if os.sep not in argv0 else argv0
        if found and _is_executable_file(Path(found)):
            return (os.path.abspath(found),)
    if executable:
        beside = shutil.which(APP_NAME, path=os.path.dirname(os.path.abspath(executable)))
        if beside:
            return (os.path.abspath(beside),)
        return (os.path.abspath(executable), "-m", APP_NAME)
    raise ServiceError("cannot tell how this lmkeeperd was started; run it by its full path")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one kind of service (platform × scope) lives, and what it runs."""

    platform: Platform
    scope: Scope
    service_file: Path
    config_path: Path
    exec_argv: tuple[str, ...]
    uid: int
    env_file: Path | None = None  # systemd: EnvironmentFile= for the API token
    log_path: Path | None = None  # launchd: StandardOutPath/StandardErrorPath
    run_as: str | None = None  # system units: User=
    # The folder `systemctl enable` puts its symlink in; uninstall removes it
    # when install's enable created it and it is empty again.
    wants_dir: Path | None = None
    linger_file: Path | None = None  # user units: exists when lingering is on

    @property
    def manager_argv(self) -> tuple[str, ...]:
        if self.platform == "darwin":
            return ("launchctl",)
        return ("systemctl", "--user") if self.scope == "user" else ("systemctl",)

    @property
    def launchd_domain(self) -> str:
        return f"gui/{self.uid}"

    @property
    def launchd_service(self) -> str:
        return f"{self.launchd_domain}/{render.LAUNCHD_LABEL}"

    def log_command(self) -> str:
        if self.platform == "darwin":
            return f"tail -F {shlex.quote(str(self.log_path))}"
        user_flag = " --user" if self.scope == "user" else ""
        return f"journalctl{user_flag} -u {APP_NAME} -f"

    def cli_command(self, verb: str) -> str:
        """`lmkeeperd service VERB` as this target needs it typed (for hints)."""
        return f"{APP_NAME} service {verb}" + (" --system" if self.scope == "system" else "")

    def describe(self) -> str:
        if self.platform == "darwin":
            return "launchd agent"
        return "systemd user service" if self.scope == "user" else "systemd system service"


def current_platform() -> Platform:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "darwin"
    raise UnsupportedPlatform(
        f"`lmkeeperd service` knows systemd (Linux) and launchd (macOS), not {sys.platform}; "
        "run `lmkeeperd run` under your own supervisor instead"
    )


def resolve_target(
    host: Host,
    platform: Platform,
    scope: Scope,
    *,
    config: Path | None = None,
    run_as: str | None = None,
    user_exists: Callable[[str], bool] | None = None,
) -> Target:
    """The target for `platform` and `scope` on `host`, or a WrongUser/Unsupported error."""
    config = config.expanduser().absolute() if config is not None else None
    if run_as is not None:
        if scope != "system":
            raise WrongUser("--run-as is for a system unit (--system); a user service runs as you")
        if not (user_exists or _user_exists)(run_as):
            raise WrongUser(f"--run-as {run_as}: there is no such user on this machine")
    if scope == "user" and host.euid == 0 and host.sudo_user:
        raise WrongUser(
            "this ran under sudo, but a user service belongs to your own login: run "
            "`lmkeeperd service install` without sudo, or add --system for a system unit"
        )
    if platform == "darwin":
        if scope == "system":
            raise UnsupportedPlatform(
                "--system is for Linux: on macOS lmkeeperd runs as a LaunchAgent in your "
                "login session, where LM Studio runs; leave out --system"
            )
        library = host.home / "Library"
        return Target(
            platform=platform,
            scope=scope,
            service_file=library / "LaunchAgents" / f"{render.LAUNCHD_LABEL}.plist",
            config_path=config
            or host.config_env
            or library / "Application Support" / APP_NAME / "config.toml",
            exec_argv=host.exec_argv,
            uid=host.uid,
            log_path=library / "Logs" / APP_NAME / LOG_FILE_NAME,
        )
    if scope == "system":
        units = Path("/etc/systemd/system")
        return Target(
            platform=platform,
            scope=scope,
            service_file=units / render.UNIT_NAME,
            config_path=config or Path("/etc") / APP_NAME / "config.toml",
            exec_argv=host.exec_argv,
            uid=host.uid,
            env_file=Path("/etc") / APP_NAME / "env",
            run_as=run_as or host.sudo_user or (host.user if host.euid != 0 else None),
            wants_dir=units / "multi-user.target.wants",
        )
    config_home = host.xdg_config_home or host.home / ".config"
    units = config_home / "systemd" / "user"
    return Target(
        platform=platform,
        scope=scope,
        service_file=units / render.UNIT_NAME,
        config_path=config or host.config_env or config_home / APP_NAME / "config.toml",
        exec_argv=host.exec_argv,
        uid=host.uid,
        env_file=config_home / APP_NAME / "env",
        wants_dir=units / "default.target.wants",
        linger_file=Path("/var/lib/systemd/linger") / host.user,
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def temporary_folder(path: Path, extra: Sequence[str] = ()) -> Path | None:
    """The temporary folder `path` lies under, if any: a service outlives such a file.

    Temporary: the system's (`tempfile.gettempdir()`, $TMPDIR), /tmp, /var/tmp, /dev/shm,
    and macOS's per-user /private/var/folders; `extra` for tests.
    """
    import tempfile

    candidates = [tempfile.gettempdir(), os.environ.get("TMPDIR", ""), *extra]
    candidates += ["/tmp", "/var/tmp", "/dev/shm", "/private/var/folders", "/private/tmp"]
    resolved = Path(os.path.realpath(path))
    for folder in candidates:
        if not folder:
            continue
        base = Path(os.path.realpath(folder))
        if base != Path("/") and resolved.is_relative_to(base):
            return base
    return None
