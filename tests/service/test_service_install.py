"""`lmkeeperd service`: dry runs, install plans, and install / uninstall / status
against fake `systemctl` and `launchctl` programs that record their arguments
(and, for `enable`, make the symlink the real one makes). Rendering is in
test_service_render.py, finding the installation in test_service_target.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import plistlib
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from unit_reader import unit_settings

from lmkeeperd import cli
from lmkeeperd.errors import ServiceManagerUnavailable, WrongUser
from lmkeeperd.service import render
from lmkeeperd.service.execute import (
    CommandResult,
    check_manager,
    check_privileges,
    execute,
    systemd_booted,
)
from lmkeeperd.service.plan import RunCommand, example_config, plan_install, plan_uninstall
from lmkeeperd.service.target import Host, Target, installed_command, resolve_target

EXEC = installed_command()
REPO = Path(__file__).resolve().parents[2]


# --- helpers -----------------------------------------------------------------


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@dataclass
class Fakes:
    """Fake systemctl/launchctl on PATH; `calls()` reads back what they were asked."""

    bin_dir: Path
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split("\t") for line in self.log.read_text().splitlines()]


FAKE_PROGRAM = r"""#!/bin/sh
# Records its argv (tab-separated, one call a line), then acts like just
# enough of the real program for install, uninstall and status.
name=$(basename "$0")
{ printf '%s' "$name"; printf '\t%s' "$@"; printf '\n'; } >>"$FAKE_LOG"
if [ -n "${FAKE_NO_BUS:-}" ]; then
    echo "Failed to connect to bus: No medium found" >&2
    exit 1
fi
case "$name $*" in
systemctl*" enable "*)
    mkdir -p "$FAKE_WANTS_DIR"
    [ -L "$FAKE_WANTS_DIR/lmkeeperd.service" ] ||
        ln -s "$FAKE_WANTS_DIR/../lmkeeperd.service" "$FAKE_WANTS_DIR/lmkeeperd.service" ;;
systemctl*" disable "*) rm -f "$FAKE_WANTS_DIR/lmkeeperd.service" ;;
systemctl*" is-enabled "*) echo "${FAKE_IS_ENABLED:-enabled}" ;;
systemctl*" is-active "*)
    echo "${FAKE_IS_ACTIVE:-active}"
    [ "${FAKE_IS_ACTIVE:-active}" = active ] || exit 3 ;;
systemctl*" show "*) echo "Version=252" ;;
"launchctl print gui/"*/*) printf 'gui/501/io.github.lmkeeperd = {\n\tstate = running\n}\n' ;;
"launchctl print-disabled "*) printf '"com.example.other" => disabled\n' ;;
esac
exit 0
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "LMKEEPERD_CONFIG", "SUDO_USER"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def fakes(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("systemctl", "launchctl"):
        program = bin_dir / name
        program.write_text(FAKE_PROGRAM)
        program.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_WANTS_DIR", str(home / ".config/systemd/user/default.target.wants"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    yield Fakes(bin_dir, log)


def invoke(*args: str) -> tuple[int, str]:
    """`lmkeeperd service ARGS` in this process: exit code, and stdout and stderr together."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = cli.run(["service", *args])
        except SystemExit as e:  # argparse on bad usage
            code = int(e.code or 0)
    return code, output.getvalue()


def user_unit(home: Path) -> Path:
    return home / ".config/systemd/user/lmkeeperd.service"


def shipped_plist_filled(home: Path, written: str) -> str:
    """launchd/io.github.lmkeeperd.plist, the file the repository ships, filled in by hand
    for this home, with the install records of what was written (they hold hashes)."""
    shipped = (REPO / "launchd" / render.PLIST_TEMPLATE).read_text(encoding="utf-8")
    library = home / "Library"
    words = [*EXEC, "run", "--config", str(library / "Application Support/lmkeeperd/config.toml")]
    filled = (
        shipped.replace(
            "@PROGRAM_ARGUMENTS@", "\n".join(f"\t\t<string>{w}</string>" for w in words)
        )
        .replace("@ENVIRONMENT@", "\t\t<key>PYTHONUNBUFFERED</key>\n\t\t<string>1</string>")
        .replace("@LOG@", str(library / "Logs/lmkeeperd/lmkeeperd.log"))
    )
    records = "".join(line for line in written.splitlines(True) if "lmkeeperd-install:" in line)
    heading = next(line for line in written.splitlines(True) if "Written by" in line)
    head, plist_tag, rest = filled.partition("<plist ")
    return head + heading + records + plist_tag + rest


def plist_path(home: Path) -> Path:
    return home / "Library/LaunchAgents" / f"{render.LAUNCHD_LABEL}.plist"


# --- dry runs --------------------------------------------------------------------


def test_dry_run_prints_the_unit_and_commands_and_touches_nothing(home: Path) -> None:
    code, output = invoke("install", "--dry-run", "--platform", "linux")
    assert code == 0, output
    assert f"ExecStart={EXEC[0]} run --config {home}/.config/lmkeeperd/config.toml" in output
    assert "run: systemctl --user daemon-reload\n" in output
    assert "run: systemctl --user enable --now lmkeeperd.service\n" in output
    assert "journalctl --user -u lmkeeperd -f" in output
    assert tree(home) == []


def test_dry_run_for_macos_prints_the_plist_and_bootstrap(home: Path) -> None:
    code, output = invoke("install", "--dry-run", "--platform", "darwin")
    assert code == 0, output
    plist_text = output.split("----- begin io.github.lmkeeperd.plist -----\n")[1]
    plist_text = plist_text.split("----- end")[0]
    job = plistlib.loads(plist_text.encode())
    assert job["ProgramArguments"][0] == EXEC[0]
    uid = os.getuid()
    assert f"run: launchctl bootstrap gui/{uid} {plist_path(home)}\n" in output
    assert f"tail -F {home}/Library/Logs/lmkeeperd/lmkeeperd.log" in output
    assert tree(home) == []


def test_dry_run_as_a_real_process(home: Path) -> None:
    # The way a person runs it: a separate interpreter, nothing shared with pytest.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmkeeperd",
            "service",
            "install",
            "--dry-run",
            "--platform",
            "linux",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in result.stdout
    assert f"ExecStart={EXEC[0]} run" in result.stdout
    assert tree(home) == []


def test_system_flag_on_macos_is_a_usage_error(home: Path) -> None:
    code, output = invoke("install", "--system", "--dry-run", "--platform", "darwin")
    assert code == 2
    assert "LaunchAgent" in output


def test_a_user_service_under_sudo_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = replace(Host.current(), euid=0, sudo_user="alice")
    with pytest.raises(WrongUser, match="without sudo"):
        resolve_target(host, "linux", "user")


# --- install and uninstall, Linux user service -------------------------------------


def test_install_then_uninstall_leaves_nothing_behind(home: Path, fakes: Fakes) -> None:
    code, output = invoke("install", "--platform", "linux")
    assert code == 0, output
    unit = user_unit(home)
    config = home / ".config/lmkeeperd/config.toml"
    assert f"ExecStart={EXEC[0]} run --config {config}" in unit.read_text()
    example = example_config()
    assert example is not None and config.read_text() == example
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert (unit.parent / "default.target.wants/lmkeeperd.service").is_symlink()
    assert fakes.calls() == [
        ["systemctl", "--user", "show", "--property=Version"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "lmkeeperd.service"],
    ]
    assert f"wrote {unit}" in output
    assert "journalctl --user -u lmkeeperd -f" in output

    fakes.log.unlink()
    code, output = invoke("uninstall", "--platform", "linux")
    assert code == 0, output
    assert fakes.calls() == [
        ["systemctl", "--user", "show", "--property=Version"],
        ["systemctl", "--user", "disable", "--now", "lmkeeperd.service"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "reset-failed", "lmkeeperd.service"],
    ]
    assert tree(home) == []


def test_reinstall_restarts_and_uninstall_still_removes_everything(
    home: Path, fakes: Fakes
) -> None:
    assert invoke("install", "--platform", "linux")[0] == 0
    fakes.log.unlink()
    code, output = invoke("install", "--platform", "linux")
    assert code == 0, output
    assert fakes.calls()[1:] == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "lmkeeperd.service"],
        ["systemctl", "--user", "restart", "lmkeeperd.service"],
    ]
    assert "Kept your config" in output
    assert invoke("uninstall", "--platform", "linux")[0] == 0
    assert tree(home) == []


def test_a_config_edited_after_install_is_kept(home: Path, fakes: Fakes) -> None:
    assert invoke("install", "--platform", "linux")[0] == 0
    config = home / ".config/lmkeeperd/config.toml"
    config.write_text('[model]\nselected = "qwen/qwen3-4b-2507"\n')
    code, output = invoke("uninstall", "--platform", "linux")
    assert code == 0, output
    assert f"Kept {config}: it changed since install" in output
    assert tree(home) == [".config", ".config/lmkeeperd", ".config/lmkeeperd/config.toml"]


def test_an_existing_config_is_never_overwritten_nor_removed(home: Path, fakes: Fakes) -> None:
    config = home / ".config/lmkeeperd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n")
    assert invoke("install", "--platform", "linux")[0] == 0
    assert config.read_text() == "# mine\n"
    assert invoke("uninstall", "--platform", "linux")[0] == 0
    assert tree(home) == [".config", ".config/lmkeeperd", ".config/lmkeeperd/config.toml"]


def test_a_hand_written_unit_is_left_alone(home: Path, fakes: Fakes) -> None:
    unit = user_unit(home)
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/true\n")
    for command in ("install", "uninstall"):
        code, output = invoke(command, "--platform", "linux")
        assert code == 1
        assert "not written by `lmkeeperd service install`" in output
    assert unit.read_text() == "[Service]\nExecStart=/usr/bin/true\n"
    assert fakes.calls() == []


def test_uninstall_when_not_installed_says_so(home: Path, fakes: Fakes) -> None:
    code, output = invoke("uninstall", "--platform", "linux")
    assert code == 0
    assert "Nothing to remove" in output
    assert fakes.calls() == []


def test_no_user_manager_is_a_clear_error_and_writes_nothing(
    home: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NO_BUS", "1")
    code, output = invoke("install", "--platform", "linux")
    assert code == 1
    assert "Failed to connect to bus" in output
    assert "lmkeeperd run" in output
    assert tree(home) == []


def test_no_systemctl_at_all_is_a_clear_error(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, output = invoke("install", "--platform", "linux")
    assert code == 1
    assert "systemctl not found" in output
    assert tree(home) == []


def test_a_file_in_the_way_is_an_error_not_a_traceback(home: Path, fakes: Fakes) -> None:
    (home / ".config").write_text("not a folder")
    code, output = invoke("install", "--platform", "linux")
    assert code == 1
    assert "error: " in output and "Not a directory" in output
    assert fakes.calls() == []  # found while planning: nothing was run or written
    assert tree(home) == [".config"]


@pytest.mark.skipif(
    shutil.which("systemctl") is None or systemd_booted(),
    reason="needs systemctl on a machine where systemd is not PID 1",
)
def test_real_systemctl_without_systemd_running_is_recognised(home: Path) -> None:
    host = Host.current()
    target = resolve_target(host, "linux", "user")
    with pytest.raises(ServiceManagerUnavailable, match="systemd is not running"):
        check_manager(target)


def test_status_reports_installed_enabled_running(home: Path, fakes: Fakes) -> None:
    code, output = invoke("status", "--platform", "linux")
    assert code == 3
    assert "not installed" in output
    assert invoke("install", "--platform", "linux")[0] == 0
    code, output = invoke("status", "--platform", "linux")
    assert code == 0, output
    assert f"installed: {user_unit(home)}" in output
    assert "enabled: yes" in output
    assert "running: yes" in output


def test_status_of_a_stopped_service_exits_3(
    home: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("install", "--platform", "linux")[0] == 0
    monkeypatch.setenv("FAKE_IS_ACTIVE", "failed")
    code, output = invoke("status", "--platform", "linux")
    assert code == 3
    assert "running: no (is-enabled: enabled, is-active: failed)" in output


def test_status_without_a_manager_says_unknown(
    home: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("install", "--platform", "linux")[0] == 0
    monkeypatch.setenv("FAKE_NO_BUS", "1")
    code, output = invoke("status", "--platform", "linux")
    assert code == 1
    assert "running: unknown" in output
    assert "Failed to connect to bus" in output


# --- install and uninstall, macOS LaunchAgent ------------------------------------------


def test_launch_agent_install_then_uninstall_leaves_nothing_behind(
    home: Path, fakes: Fakes
) -> None:
    uid = os.getuid()
    code, output = invoke("install", "--platform", "darwin")
    assert code == 0, output
    plist = plist_path(home)
    job = plistlib.loads(plist.read_bytes())
    assert job["ProgramArguments"][0] == EXEC[0]
    assert stat.S_IMODE(plist.stat().st_mode) == 0o600
    assert plist.read_text(encoding="utf-8") == shipped_plist_filled(home, plist.read_text())
    assert (home / "Library/Logs/lmkeeperd").is_dir()
    assert fakes.calls() == [
        ["launchctl", "print", f"gui/{uid}"],
        ["launchctl", "bootstrap", f"gui/{uid}", str(plist)],
    ]
    fakes.log.unlink()
    code, output = invoke("uninstall", "--platform", "darwin")
    assert code == 0, output
    assert fakes.calls() == [
        ["launchctl", "print", f"gui/{uid}"],
        ["launchctl", "bootout", f"gui/{uid}/{render.LAUNCHD_LABEL}"],
    ]
    assert tree(home) == []


def test_launch_agent_reinstall_keeps_added_variables_and_masks_them(
    home: Path, fakes: Fakes
) -> None:
    uid = os.getuid()
    assert invoke("install", "--platform", "darwin")[0] == 0
    plist = plist_path(home)
    # As a person would add the token, in a text editor.
    plist.write_text(
        plist.read_text().replace(
            "<key>PYTHONUNBUFFERED</key>",
            "<key>LM_API_TOKEN</key><string>sk-secret-123</string><key>PYTHONUNBUFFERED</key>",
        )
    )

    code, output = invoke("install", "--dry-run", "--platform", "darwin")
    assert code == 0
    assert "sk-secret-123" not in output
    assert "(kept from the current plist)" in output

    plan = plan_install(resolve_target(Host.current(), "darwin", "user"), example_config())
    assert "sk-secret-123" not in repr(plan)

    fakes.log.unlink()
    code, output = invoke("install", "--platform", "darwin")
    assert code == 0, output
    assert "sk-secret-123" not in output
    assert plistlib.loads(plist.read_bytes())["EnvironmentVariables"]["LM_API_TOKEN"] == (
        "sk-secret-123"
    )
    assert fakes.calls()[1:] == [
        ["launchctl", "bootout", f"gui/{uid}/{render.LAUNCHD_LABEL}"],
        ["launchctl", "bootstrap", f"gui/{uid}", str(plist)],
    ]


def test_launch_agent_status(home: Path, fakes: Fakes) -> None:
    assert invoke("install", "--platform", "darwin")[0] == 0
    code, output = invoke("status", "--platform", "darwin")
    assert code == 0, output
    assert "enabled: yes" in output
    assert "running: yes (state: running)" in output


# --- the system unit (through the API: it writes to /etc) --------------------------------


@dataclass
class Recorder:
    calls: list[tuple[str, ...]]

    def __call__(self, argv: object) -> CommandResult:
        assert isinstance(argv, tuple)
        self.calls.append(argv)
        return CommandResult(0)


def system_target(root: Path, run_as: str | None = "alice") -> Target:
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    return Target(
        platform="linux",
        scope="system",
        service_file=units / "lmkeeperd.service",
        config_path=root / "etc/lmkeeperd/config.toml",
        exec_argv=EXEC,
        uid=0,
        env_file=root / "etc/lmkeeperd/env",
        run_as=run_as,
        wants_dir=units / "multi-user.target.wants",
    )


def test_system_install_plan_and_round_trip(tmp_path: Path) -> None:
    target = system_target(tmp_path)
    example = textwrap.dedent("""\
        [control]
        # "" = the user runtime folder
        socket = ""
        """)
    plan = plan_install(target, example)
    commands = [step.argv for step in plan.steps if isinstance(step, RunCommand)]
    assert commands == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "--now", "lmkeeperd.service"),
    ]
    assert any("LMKEEPERD_CONFIG=" in note for note in plan.notes)
    recorder = Recorder([])
    execute(plan, recorder, report=lambda _line: None)
    assert 'socket = "/run/lmkeeperd/lmkeeperd.sock"' in target.config_path.read_text()
    assert stat.S_IMODE(target.config_path.parent.stat().st_mode) == 0o755
    assert unit_settings(target.service_file.read_text())["Service"]["User"] == ["alice"]

    uninstall = plan_uninstall(target)
    execute(uninstall, recorder, report=lambda _line: None)
    assert recorder.calls[2:] == [
        ("systemctl", "disable", "--now", "lmkeeperd.service"),
        ("systemctl", "daemon-reload"),
        ("systemctl", "reset-failed", "lmkeeperd.service"),
    ]
    assert tree(tmp_path) == ["etc", "etc/systemd", "etc/systemd/system"]


def test_system_unit_needs_a_user_other_than_root(tmp_path: Path) -> None:
    for run_as in (None, "root"):
        with pytest.raises(WrongUser, match="--run-as"):
            plan_install(system_target(tmp_path, run_as), None)


def test_system_unit_needs_root_to_install() -> None:
    host = replace(Host.current(), euid=1000, uid=1000, user="alice")
    system = resolve_target(host, "linux", "system")
    assert system.run_as == "alice"
    with pytest.raises(WrongUser, match="sudo"):
        check_privileges(system, euid=1000)
    check_privileges(system, euid=0)


def test_under_sudo_the_system_unit_runs_as_the_sudo_user() -> None:
    host = replace(Host.current(), euid=0, uid=0, user="root", sudo_user="bob")
    assert resolve_target(host, "linux", "system").run_as == "bob"


def test_linger_hint_only_when_lingering_is_off(tmp_path: Path, home: Path) -> None:
    linger_file = tmp_path / "linger/me"
    target = replace(resolve_target(Host.current(), "linux", "user"), linger_file=linger_file)
    assert any("loginctl enable-linger me" in n for n in plan_install(target, None).notes)
    linger_file.parent.mkdir()
    linger_file.touch()
    assert not any("enable-linger" in n for n in plan_install(target, None).notes)


# --- unknown where the manager is out of reach, --run-as, hints ---------------


def test_status_not_installed_and_no_manager_says_unknown_why_and_warns(
    home: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NO_BUS", "1")
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        code = cli.run(["service", "status", "--platform", "linux"])
    assert code == 1  # the manager could not be asked (interface.md)
    assert "running: unknown (" in output.getvalue()
    assert "running: no ()" not in output.getvalue()
    assert errors.getvalue().startswith("lmkeeperd: warning: ")
    assert "Failed to connect to bus" in errors.getvalue()


def test_dry_run_without_a_manager_says_unknown_and_warns(
    home: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NO_BUS", "1")
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        code = cli.run(["service", "install", "--dry-run", "--platform", "linux"])
    assert code == 0
    assert "service manager: unknown (" in output.getvalue()
    assert errors.getvalue().startswith("lmkeeperd: warning: the real run would fail here")
    assert tree(home) == []


def test_dry_run_with_a_manager_has_no_warning(home: Path, fakes: Fakes) -> None:
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        assert cli.run(["service", "install", "--dry-run", "--platform", "linux"]) == 0
    assert "unknown" not in output.getvalue() and errors.getvalue() == ""


def test_run_as_must_name_an_existing_user(home: Path, fakes: Fakes) -> None:
    code, output = invoke("install", "--system", "--run-as", "no-such-user-lmk", "--dry-run")
    assert code == 2
    assert output.strip() == (
        "lmkeeperd: error: --run-as no-such-user-lmk: there is no such user on this machine"
    )
    code, output = invoke("install", "--run-as", "nobody", "--dry-run", "--platform", "linux")
    assert code == 2 and "--run-as is for a system unit (--system)" in output


def test_system_hints_carry_the_system_flag(home: Path) -> None:
    # `nobody` exists on every Unix; a dry run writes nothing, so no root is needed.
    code, output = invoke(
        "install", "--system", "--run-as", "nobody", "--dry-run", "--platform", "linux"
    )
    assert code == 0, output
    assert "Check on it: lmkeeperd service status --system" in output
    target = system_target(Path("/"))
    assert target.cli_command("uninstall") == "lmkeeperd service uninstall --system"
    user = resolve_target(Host.current(), "linux", "user")
    assert user.cli_command("status") == "lmkeeperd service status"
