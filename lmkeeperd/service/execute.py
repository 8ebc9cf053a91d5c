"""Carrying out a `Plan`, and the checks before it: the manager is reachable, the user is right.

`execute` runs the steps in order, reporting each, and stops at the first
failure. The `systemctl`/`launchctl` commands go through a `CommandRunner`, so
tests run them against fake programs that record their arguments.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

from lmkeeperd.errors import ServiceCommandFailed, ServiceManagerUnavailable, WrongUser
from lmkeeperd.paths import APP_NAME
from lmkeeperd.service.plan import (
    MakeDir,
    Plan,
    RemoveDirIfEmpty,
    RemoveFile,
    RunCommand,
    WriteFile,
)
from lmkeeperd.service.target import Target

# Long enough for `systemctl start` to wait out the daemon's start-up
# (Type=notify waits for READY=1); a hung manager still ends the command.
COMMAND_TIMEOUT_S = 180.0


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
            shlex.join(argv), 124, f"no answer within {COMMAND_TIMEOUT_S:.0f} s"
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
            "Run `lmkeeperd run` in the foreground under the supervisor you use instead.",
            reason=f"{program} not found",
        )
    if target.platform == "darwin":
        probe: tuple[str, ...] = (program, "print", target.launchd_domain)
    else:
        probe = (*target.manager_argv, "show", "--property=Version")
    result = runner(probe)
    if result.returncode != 0:
        raise ServiceManagerUnavailable(*_unavailable_message(target, result, booted))


def _unavailable_message(
    target: Target, result: CommandResult, booted: Callable[[], bool]
) -> tuple[str, str]:
    """The whole story, and the short reason `service status` puts in `unknown (...)`."""
    output = (result.stderr or result.stdout).strip()
    said = f" ({output})" if output else ""
    fallback = "Or run `lmkeeperd run` in the foreground under another supervisor."
    if target.platform == "darwin":
        return (
            f"launchd has no GUI session for uid {target.uid}{said}. LaunchAgents run in the "
            f"session of a user logged in at the Mac: log in there first. {fallback}",
            f"no launchd GUI session for uid {target.uid}",
        )
    if "not been booted with systemd" in output or not booted():
        return (
            f"systemd is not running on this machine{said}, as inside most containers. {fallback}",
            "systemd is not PID 1 here",
        )
    if target.scope == "user":
        return (
            f"cannot reach your systemd user manager{said}. This happens under `su`, `sudo -u` "
            "or a bare container shell: log in as the user directly (ssh or a desktop "
            f"session), or use --system. {fallback}",
            "the systemd user manager cannot be reached",
        )
    return f"cannot reach systemd{said}. {fallback}", "systemd cannot be reached"


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
            f"or remove everything with `{target.cli_command('uninstall')}`."
        )
    elif "bootstrap" in step.argv:
        hint = (
            f"If launchctl says the service is disabled: launchctl enable {target.launchd_service}"
            " and install again."
        )
    raise ServiceCommandFailed(
        shlex.join(step.argv), result.returncode, result.stderr or result.stdout, hint
    )


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
