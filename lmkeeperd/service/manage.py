"""Installing, removing and inspecting lmkeeperd as a systemd or launchd service.

Theory of operation: `plan_install` and `plan_uninstall` look at the machine
(reading only) and return a `Plan`: the folders to create, the files to write
or remove, and the `systemctl`/`launchctl` commands to run, in order, plus
notes for the person. `--dry-run` prints a plan; `execute` carries it out
step by step, reporting each one. Tests assert on plans, and run `execute`
against fake `systemctl`/`launchctl` programs.

What `uninstall` may remove is what `install` wrote down in the service file
itself (see `render.InstallRecord`): the service file, the config file it
created (only while unchanged) and the folders it created (only while empty).
A service file without those records was made by someone else and is left
alone.

    ServiceError                      (an LmkeeperError)
    ├── UnsupportedPlatform           no systemd/launchd support here (exit 2)
    ├── WrongUser                     needs root, or must not run as root (exit 2)
    ├── NotInstalledByUs              the service file was not written by us (exit 1)
    ├── ServiceManagerUnavailable     systemctl/launchctl missing or unreachable (exit 1)
    └── ServiceCommandFailed          a systemctl/launchctl command failed (exit 1)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol, TypeAlias

import lmkeeperd
from lmkeeperd.errors import LmkeeperError
from lmkeeperd.service import render
from lmkeeperd.service.render import InstallRecord, Scope

Platform: TypeAlias = Literal["linux", "darwin"]

APP_NAME = "lmkeeperd"
EXAMPLE_CONFIG_NAME = "config.example.toml"
SYSTEM_SOCKET = "/run/lmkeeperd/lmkeeperd.sock"
LOG_FILE_NAME = "lmkeeperd.log"
# Long enough for `systemctl start` to wait out the daemon's start-up
# (Type=notify waits for READY=1); a hung manager still ends the command.
COMMAND_TIMEOUT_S = 180.0


class ServiceError(LmkeeperError):
    """Installing, removing or querying the service failed."""

    exit_code = 1


class UnsupportedPlatform(ServiceError):
    """No service manager lmkeeperd knows how to use on this platform."""

    exit_code = 2


class WrongUser(ServiceError):
    """The command needs root (system unit) or must not run as root (user unit)."""

    exit_code = 2


class NotInstalledByUs(ServiceError):
    """A service file exists that `service install` did not write."""


class ServiceManagerUnavailable(ServiceError):
    """systemctl/launchctl is missing, or its manager cannot be reached."""


class ServiceCommandFailed(ServiceError):
    """A systemctl/launchctl command exited non-zero."""

    def __init__(self, argv: Sequence[str], result: CommandResult, hint: str = "") -> None:
        self.argv = tuple(argv)
        self.result = result
        output = (result.stderr or result.stdout).strip()
        message = f"`{shlex.join(argv)}` failed (exit {result.returncode})"
        if output:
            message += f": {output}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


# --- the machine and the target ----------------------------------------------


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
) -> Target:
    """The target for `platform` and `scope` on `host`, or a WrongUser/Unsupported error."""
    config = config.expanduser().absolute() if config is not None else None
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


# --- plans ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MakeDir:
    path: Path
    mode: int


@dataclass(frozen=True, slots=True)
class WriteFile:
    path: Path
    # Out of the repr: a plist may hold the API token a person added to it.
    content: str = field(repr=False)
    mode: int = 0o644
    # False for the user's config: written only when no file is there.
    replace: bool = True
    # --dry-run prints this one line instead of the content, when set.
    summary: str | None = None
    # --dry-run prints this instead of the content, when set: the content with
    # values a person added (such as the token) masked.
    masked: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RemoveFile:
    path: Path


@dataclass(frozen=True, slots=True)
class RemoveDirIfEmpty:
    path: Path


@dataclass(frozen=True, slots=True)
class RunCommand:
    argv: tuple[str, ...]
    # For commands whose failure means "nothing to do", like stopping a job
    # launchd has not loaded.
    may_fail: bool = False


Step: TypeAlias = MakeDir | WriteFile | RemoveFile | RemoveDirIfEmpty | RunCommand


@dataclass(frozen=True, slots=True)
class Plan:
    target: Target
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()


def example_config() -> str | None:
    """config.example.toml from the package, or from the source tree it runs from."""
    packaged = resources.files(lmkeeperd).joinpath(EXAMPLE_CONFIG_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(lmkeeperd.__file__).resolve().parent.parent / EXAMPLE_CONFIG_NAME
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    return None


def plan_install(target: Target, example: str | None) -> Plan:
    """What `service install` will do for `target`, given the example config text."""
    existing = _read_text(target.service_file)
    old_records = render.parse_install_records(existing) if existing is not None else []
    reinstall = existing is not None
    if target.scope == "system" and target.run_as in (None, "root"):
        raise WrongUser(
            "say which user lmkeeperd should run as, with --run-as USER: it must be "
            "the user whose LM Studio models and editor it serves, not root"
        )
    if reinstall and not _has_marker(old_records):
        raise NotInstalledByUs(
            f"{target.service_file} exists but was not written by `lmkeeperd service install`; "
            "move it away first if you want `service install` to manage the service"
        )
    records = [r for r in old_records if r.kind != "marker" and Path(r.path).exists()]
    steps: list[Step] = []
    notes: list[str] = []

    wanted_dirs = [target.service_file.parent, target.config_path.parent]
    if target.log_path is not None:
        wanted_dirs.append(target.log_path.parent)
    for directory in _missing_dirs(wanted_dirs):
        # A user's lmkeeperd folders may hold the token's env file; /etc/lmkeeperd
        # must stay readable for the User= the system unit runs as.
        private = target.scope == "user" and directory.name == APP_NAME
        steps.append(MakeDir(directory, 0o700 if private else 0o755))
        records.append(InstallRecord(kind="dir", path=str(directory)))
    if target.wants_dir is not None and not target.wants_dir.exists():
        records.append(InstallRecord(kind="dir", path=str(target.wants_dir)))

    if target.config_path.exists():
        notes.append(f"Kept your config {target.config_path}.")
    elif example is None:
        notes.append(
            f"This installation has no {EXAMPLE_CONFIG_NAME}: the daemon runs on built-in "
            f"defaults until you create {target.config_path}."
        )
    else:
        config_text = _config_for(target, example)
        steps.append(
            WriteFile(
                target.config_path,
                config_text,
                0o644 if target.scope == "system" else 0o600,
                replace=False,
                summary=f"a copy of {EXAMPLE_CONFIG_NAME}, {len(config_text.splitlines())} lines",
            )
        )
        records.append(
            InstallRecord(kind="file", path=str(target.config_path), sha256=_sha256(config_text))
        )

    all_records = [InstallRecord(kind="marker", version=lmkeeperd.__version__), *records]
    steps.append(_service_file_step(target, existing, all_records))
    steps.extend(_start_commands(target, reinstall))
    notes.extend(_install_notes(target))
    return Plan(target, tuple(steps), tuple(notes))


def plan_uninstall(target: Target) -> Plan:
    """What `service uninstall` will do: undo what `install` recorded, nothing more."""
    existing = _read_text(target.service_file)
    if existing is None:
        return Plan(target, (), (f"Nothing to remove: {target.service_file} does not exist.",))
    records = render.parse_install_records(existing)
    if not _has_marker(records):
        raise NotInstalledByUs(
            f"{target.service_file} was not written by `lmkeeperd service install`; "
            "leaving it alone (stop and remove it the way it was set up)"
        )
    steps: list[Step] = []
    notes: list[str] = []
    manager = target.manager_argv
    if target.platform == "darwin":
        steps.append(RunCommand((*manager, "bootout", target.launchd_service), may_fail=True))
    else:
        steps.append(RunCommand((*manager, "disable", "--now", render.UNIT_NAME)))
    steps.append(RemoveFile(target.service_file))
    for record in records:
        if record.kind != "file":
            continue
        path = Path(record.path)
        text = _read_text(path)
        if text is None:
            continue
        if _sha256(text) == record.sha256:
            steps.append(RemoveFile(path))
        else:
            notes.append(f"Kept {path}: it changed since install. Remove it yourself if unneeded.")
    dirs = [Path(r.path) for r in records if r.kind == "dir"]
    # Deepest first, so a folder is emptied before its parent is tried.
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        steps.append(RemoveDirIfEmpty(directory))
    if target.platform == "linux":
        steps.append(RunCommand((*manager, "daemon-reload")))
        steps.append(RunCommand((*manager, "reset-failed", render.UNIT_NAME), may_fail=True))
        drop_ins = target.service_file.with_name(render.UNIT_NAME + ".d")
        if drop_ins.exists():
            notes.append(f"Kept your drop-ins in {drop_ins} (not written by install).")
    return Plan(target, tuple(steps), tuple(notes))


def _service_file_step(
    target: Target, existing: str | None, records: Sequence[InstallRecord]
) -> WriteFile:
    if target.platform == "linux":
        assert target.env_file is not None
        params = render.UnitParams(
            exec_argv=target.exec_argv,
            config_path=target.config_path,
            env_file=target.env_file,
            run_as=target.run_as,
        )
        return WriteFile(
            target.service_file,
            render.render_systemd_unit(target.scope, params, records),
            0o644,
            replace=True,
        )
    assert target.log_path is not None
    # Variables a person added to the plist (the API token, say) survive a re-install.
    kept = render.environment_of_plist(existing) if existing is not None else {}
    kept.pop("PYTHONUNBUFFERED", None)
    plist = render.PlistParams(target.exec_argv, target.config_path, target.log_path, kept)
    masked = render.PlistParams(
        target.exec_argv,
        target.config_path,
        target.log_path,
        dict.fromkeys(kept, "(kept from the current plist)"),
    )
    return WriteFile(
        target.service_file,
        render.render_launchd_plist(plist, records),
        # It may hold the API token a person added.
        0o600,
        replace=True,
        masked=render.render_launchd_plist(masked, records) if kept else None,
    )


def _start_commands(target: Target, reinstall: bool) -> list[RunCommand]:
    manager = target.manager_argv
    if target.platform == "darwin":
        commands = []
        if reinstall:
            # launchd reads a plist only at bootstrap: unload the old one first.
            commands.append(
                RunCommand((*manager, "bootout", target.launchd_service), may_fail=True)
            )
        commands.append(
            RunCommand((*manager, "bootstrap", target.launchd_domain, str(target.service_file)))
        )
        return commands
    commands = [RunCommand((*manager, "daemon-reload"))]
    if reinstall:
        # `enable --now` leaves a running daemon on the old executable.
        commands.append(RunCommand((*manager, "enable", render.UNIT_NAME)))
        commands.append(RunCommand((*manager, "restart", render.UNIT_NAME)))
    else:
        commands.append(RunCommand((*manager, "enable", "--now", render.UNIT_NAME)))
    return commands


def _install_notes(target: Target) -> list[str]:
    notes = [f"Follow the logs: {target.log_command()}", "Check on it: lmkeeperd service status"]
    token = "LM_API_TOKEN (or the name [server] api_token_env sets)"
    if target.platform == "darwin":
        notes.append(
            f"If LM Studio requires an API token: add {token} under EnvironmentVariables in "
            f"{target.service_file}, then run `lmkeeperd service install` again to reload it "
            "(it keeps variables you add)."
        )
        return notes
    restart = f"{shlex.join(target.manager_argv)} restart {APP_NAME}"
    notes.append(
        f"If LM Studio requires an API token: put the line {token}=<token> in "
        f"{target.env_file} (mode 0600), then `{restart}`."
    )
    if target.scope == "system":
        notes.append(
            f"Clients find the daemon through the same config: "
            f"export LMKEEPERD_CONFIG={shlex.quote(str(target.config_path))}"
        )
    elif target.linger_file is not None and not target.linger_file.exists():
        notes.append(
            "lmkeeperd stops when you log out. To keep it running, and start it at boot: "
            f"sudo loginctl enable-linger {target.linger_file.name}"
        )
    return notes


def _config_for(target: Target, example: str) -> str:
    if target.scope != "system":
        return example
    # The system unit's socket is in /run/lmkeeperd, not in the user runtime
    # folder clients look in by default: say so in the config they share.
    socket_line = re.compile(r'^(socket\s*=\s*)""', re.MULTILINE)
    return socket_line.sub(lambda m: f'{m.group(1)}"{SYSTEM_SOCKET}"', example, count=1)


def _missing_dirs(wanted: Sequence[Path]) -> list[Path]:
    """The folders to create so that every one in `wanted` exists, parents first."""
    missing: list[Path] = []
    for directory in wanted:
        chain = []
        current = directory
        while not current.exists() and current != current.parent:
            chain.append(current)
            current = current.parent
        for path in reversed(chain):
            if path not in missing:
                missing.append(path)
    return missing


# --- running a plan ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


class CommandRunner(Protocol):
    def __call__(self, argv: Sequence[str]) -> CommandResult: ...


def run_command(argv: Sequence[str]) -> CommandResult:
    """Runs a systemctl/launchctl command, capturing its output."""
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ServiceManagerUnavailable(f"{argv[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceCommandFailed(
            argv, CommandResult(124, stderr=f"no answer within {COMMAND_TIMEOUT_S:.0f} s")
        ) from exc
    return CommandResult(completed.returncode, completed.stdout, completed.stderr)


def systemd_booted() -> bool:
    """Whether PID 1 is systemd (sd_booted(3)'s test)."""
    return Path("/run/systemd/system").is_dir()


def check_manager(
    target: Target,
    runner: CommandRunner = run_command,
    booted: Callable[[], bool] = systemd_booted,
) -> None:
    """Raises ServiceManagerUnavailable, saying what to do, when the manager is not usable."""
    program = target.manager_argv[0]
    if shutil.which(program) is None:
        what = "systemd" if program == "systemctl" else "launchd (macOS)"
        raise ServiceManagerUnavailable(
            f"{program} not found: this system does not run {what}. "
            "Run `lmkeeperd run` in the foreground under the supervisor you use instead."
        )
    if target.platform == "darwin":
        probe: tuple[str, ...] = (program, "print", target.launchd_domain)
    else:
        probe = (*target.manager_argv, "show", "--property=Version")
    result = runner(probe)
    if result.returncode != 0:
        raise ServiceManagerUnavailable(_unavailable_message(target, result, booted))


def _unavailable_message(target: Target, result: CommandResult, booted: Callable[[], bool]) -> str:
    output = (result.stderr or result.stdout).strip()
    said = f" ({output})" if output else ""
    fallback = "Or run `lmkeeperd run` in the foreground under another supervisor."
    if target.platform == "darwin":
        return (
            f"launchd has no GUI session for uid {target.uid}{said}. LaunchAgents run in the "
            f"session of a user logged in at the Mac: log in there first. {fallback}"
        )
    if "not been booted with systemd" in output or not booted():
        return (
            f"systemd is not running on this machine{said}, as inside most containers. {fallback}"
        )
    if target.scope == "user":
        return (
            f"cannot reach your systemd user manager{said}. This happens under `su`, `sudo -u` "
            "or a bare container shell: log in as the user directly (ssh or a desktop "
            f"session), or use --system. {fallback}"
        )
    return f"cannot reach systemd{said}. {fallback}"


def check_privileges(target: Target, euid: int) -> None:
    """System units are written to /etc and run by PID 1: that needs root."""
    if target.scope == "system" and euid != 0:
        raise WrongUser(
            "installing or removing the system unit needs root: run it with sudo and the "
            f"full path, e.g. sudo {shlex.join(target.exec_argv)} service ... --system"
        )


Reporter: TypeAlias = Callable[[str], None]


def execute(plan: Plan, runner: CommandRunner = run_command, report: Reporter = print) -> None:
    """Carries out `plan` in order, reporting each step; stops at the first failure."""
    for step in plan.steps:
        if isinstance(step, MakeDir):
            try:
                step.path.mkdir()
            except FileExistsError:
                continue
            step.path.chmod(step.mode)
            report(f"created folder {step.path}")
        elif isinstance(step, WriteFile):
            if step.replace:
                _write_atomically(step.path, step.content, step.mode)
                report(f"wrote {step.path}")
            elif _write_new(step.path, step.content, step.mode):
                report(f"wrote {step.path}")
            else:
                report(f"kept existing {step.path}")
        elif isinstance(step, RemoveFile):
            with contextlib.suppress(FileNotFoundError):
                step.path.unlink()
                report(f"removed {step.path}")
        elif isinstance(step, RemoveDirIfEmpty):
            _remove_dir_if_empty(step.path, report)
        else:
            _run_step(plan.target, step, runner, report)


def _run_step(target: Target, step: RunCommand, runner: CommandRunner, report: Reporter) -> None:
    report(f"ran: {shlex.join(step.argv)}")
    result = runner(step.argv)
    if result.returncode == 0 or step.may_fail:
        return
    hint = ""
    if "start" in step.argv or "--now" in step.argv or "restart" in step.argv:
        hint = (
            f"lmkeeperd did not start; see why with: {target.log_command().replace(' -f', ' -e')}\n"
            f"Fix it, then `{shlex.join(target.manager_argv)} restart {APP_NAME}`, "
            "or remove everything with `lmkeeperd service uninstall`."
        )
    elif "bootstrap" in step.argv:
        hint = (
            f"If launchctl says the service is disabled: launchctl enable {target.launchd_service}"
            " and install again."
        )
    raise ServiceCommandFailed(step.argv, result, hint)


def _write_atomically(path: Path, content: str, mode: int) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(content)
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _write_new(path: Path, content: str, mode: int) -> bool:
    """Writes `path` only if nothing is there (never a person's config); False if kept."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(content)
    os.chmod(path, mode)
    return True


def _remove_dir_if_empty(path: Path, report: Reporter) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            report(f"kept folder {path} (not empty)")
            return
        raise
    report(f"removed folder {path}")


# --- status --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    target: Target
    installed: bool
    installed_by_us: bool
    enabled: bool | None  # None: the manager could not be asked
    running: bool | None
    detail: dict[str, str] = field(default_factory=dict)  # the manager's own words
    problem: str | None = None


def query_status(target: Target, runner: CommandRunner = run_command) -> ServiceStatus:
    """Whether the service is installed, enabled and running; asks the manager."""
    text = _read_text(target.service_file)
    installed = text is not None
    ours = installed and _has_marker(render.parse_install_records(text or ""))
    if not installed:
        return ServiceStatus(target, installed, ours, enabled=False, running=False)
    try:
        check_manager(target, runner)
    except ServiceManagerUnavailable as exc:
        return ServiceStatus(target, installed, ours, None, None, problem=str(exc))
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


# --- printing ------------------------------------------------------------------


def format_plan(plan: Plan) -> str:
    """The plan as --dry-run prints it: every file in full, every command as typed."""
    lines = [f"Dry run for the {plan.target.describe()}: nothing is changed.", ""]
    for step in plan.steps:
        if isinstance(step, MakeDir):
            lines.append(f"create folder {step.path} (mode {step.mode:04o})")
        elif isinstance(step, WriteFile):
            condition = "" if step.replace else ", only if absent"
            lines.append(f"write {step.path} (mode {step.mode:04o}{condition}):")
            if step.summary is not None:
                lines.append(f"    ({step.summary})")
            else:
                lines.append(f"----- begin {step.path.name} -----")
                lines.extend((step.masked or step.content).splitlines())
                lines.append(f"----- end {step.path.name} -----")
        elif isinstance(step, RemoveFile):
            lines.append(f"remove {step.path}")
        elif isinstance(step, RemoveDirIfEmpty):
            lines.append(f"remove folder {step.path} if empty")
        else:
            suffix = "   (a failure here is fine)" if step.may_fail else ""
            lines.append(f"run: {shlex.join(step.argv)}{suffix}")
    if plan.notes:
        lines.append("")
        lines.extend(plan.notes)
    return "\n".join(lines)


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
        lines.append(f"  enabled: unknown\n  running: unknown\n  {status.problem}")
        return "\n".join(lines)
    detail = ", ".join(f"{key}: {value}" for key, value in status.detail.items())
    lines.append(f"  enabled: {_yes_no(status.enabled)}")
    lines.append(f"  running: {_yes_no(status.running)} ({detail})")
    if status.installed:
        lines.append(f"  logs:    {target.log_command()}")
    return "\n".join(lines)


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _has_marker(records: Sequence[InstallRecord]) -> bool:
    return any(record.kind == "marker" for record in records)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
