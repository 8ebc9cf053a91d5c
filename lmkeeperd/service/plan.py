"""What `service install` and `service uninstall` will do, as a `Plan`.

`plan_install` and `plan_uninstall` look at the machine (reading only) and
return the folders to create, the files to write or remove, and the
`systemctl`/`launchctl` commands to run, in order, plus notes for the person.
`--dry-run` prints a plan (`format_plan`); service/execute.py carries it out.

What `uninstall` may remove is what `install` wrote down in the service file
itself (see `render.InstallRecord`): the service file, the config file it
created (only while unchanged) and the folders it created (only while empty).
A service file without those records was made by someone else and is left
alone.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeAlias

import lmkeeperd
from lmkeeperd.errors import NotInstalledByUs, WrongUser
from lmkeeperd.paths import APP_NAME
from lmkeeperd.service import render
from lmkeeperd.service.render import InstallRecord
from lmkeeperd.service.target import Target

EXAMPLE_CONFIG_NAME = "config.example.toml"
SYSTEM_SOCKET = "/run/lmkeeperd/lmkeeperd.sock"


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
    existing = read_text(target.service_file)
    old_records = render.parse_install_records(existing) if existing is not None else []
    reinstall = existing is not None
    if target.scope == "system" and target.run_as in (None, "root"):
        raise WrongUser(
            "say which user lmkeeperd should run as, with --run-as USER: it must be "
            "the user whose LM Studio models and editor it serves, not root"
        )
    if reinstall and not has_marker(old_records):
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
    existing = read_text(target.service_file)
    if existing is None:
        return Plan(target, (), (f"Nothing to remove: {target.service_file} does not exist.",))
    records = render.parse_install_records(existing)
    if not has_marker(records):
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
        text = read_text(path)
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
    notes = [
        f"Follow the logs: {target.log_command()}",
        f"Check on it: {target.cli_command('status')}",
    ]
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


def has_marker(records: Sequence[InstallRecord]) -> bool:
    return any(record.kind == "marker" for record in records)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
