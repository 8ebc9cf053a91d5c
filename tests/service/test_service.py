"""`lmkeeperd service`: rendered units and plist, install plans, and install /
uninstall / status against fake `systemctl` and `launchctl` programs that
record their arguments (and, for `enable`, make the symlink the real one makes).
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
from lmkeeperd.service.render import InstallRecord, PlistParams, UnitParams
from lmkeeperd.service.target import Host, Target, installed_command, resolve_target

REPO = Path(__file__).resolve().parents[2]
EXEC = installed_command()


# --- helpers -----------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat), as systemd reads them."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


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


def plist_path(home: Path) -> Path:
    return home / "Library/LaunchAgents" / f"{render.LAUNCHD_LABEL}.plist"


# --- templates and rendering ---------------------------------------------------


@pytest.mark.parametrize("scope", ["user", "system"])
def test_repo_root_unit_files_are_the_packaged_templates(scope: render.Scope) -> None:
    root_copy = REPO / "systemd" / render.TEMPLATE_NAMES[scope]
    assert root_copy.read_text(encoding="utf-8") == render.load_template(scope)


def test_user_unit_has_every_setting_the_issue_asks_for(tmp_path: Path) -> None:
    params = UnitParams(EXEC, tmp_path / "config.toml", tmp_path / "env")
    text = render.render_systemd_unit("user", params)
    unit = unit_settings(text)
    service = unit["Service"]
    assert "@" not in "".join(service["ExecStart"]).split("lmkeeperd")[0]
    assert service["ExecStart"] == [f"{' '.join(EXEC)} run --config {tmp_path}/config.toml"]
    assert service["Type"] == ["notify"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["kill -HUP $MAINPID"]
    assert service["RuntimeDirectory"] == ["lmkeeperd"]
    assert service["StateDirectory"] == ["lmkeeperd"]
    assert service["SyslogIdentifier"] == ["lmkeeperd"]
    assert service["EnvironmentFile"] == [f"-{tmp_path}/env"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["read-only"]
    assert service["PrivateTmp"] == ["yes"]
    assert service["PrivateUsers"] == ["yes"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in service["SystemCallFilter"]
    assert "User" not in service
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert "@EXEC@" not in text and "@CONFIG@" not in text and "@ENV_FILE@" not in text


def test_system_unit_runs_as_the_named_user_from_boot(tmp_path: Path) -> None:
    params = UnitParams(
        EXEC, Path("/etc/lmkeeperd/config.toml"), Path("/etc/lmkeeperd/env"), "alice"
    )
    unit = unit_settings(render.render_systemd_unit("system", params))
    service = unit["Service"]
    assert service["User"] == ["alice"]
    assert service["ExecStart"] == [f"{' '.join(EXEC)} run --config /etc/lmkeeperd/config.toml"]
    assert service["EnvironmentFile"] == ["-/etc/lmkeeperd/env"]
    assert service["Type"] == ["notify"]
    assert service["ProtectHome"] == ["read-only"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("run_as", [None, "bad user", "x\ny", ""])
def test_system_unit_refuses_a_missing_or_malformed_user(run_as: str | None) -> None:
    params = UnitParams(EXEC, Path("/etc/c.toml"), Path("/etc/env"), run_as)
    with pytest.raises(ValueError, match="user name"):
        render.render_systemd_unit("system", params)


def test_relative_executable_or_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        render.render_systemd_unit("user", UnitParams(("lmkeeperd",), tmp_path, tmp_path))
    with pytest.raises(ValueError, match="absolute"):
        render.render_systemd_unit("user", UnitParams(EXEC, Path("c.toml"), tmp_path))


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("/home/al/.local/bin/lmkeeperd", "/home/al/.local/bin/lmkeeperd"),
        ("/home/al b/x", '"/home/al b/x"'),
        ("/50%/x", '"/50%%/x"'),
        ("/a$HOME/x", '"/a$$HOME/x"'),
        ('/a"b\\c', '"/a\\"b\\\\c"'),
    ],
)
def test_systemd_quote_keeps_words_literal(word: str, quoted: str) -> None:
    assert render.systemd_quote(word) == quoted


def test_the_program_path_keeps_its_dollar_signs() -> None:
    # systemd expands variables in arguments only, never in the program path.
    assert render.systemd_quote("/a$HOME/x", program=True) == '"/a$HOME/x"'


def test_control_characters_never_reach_a_unit() -> None:
    with pytest.raises(ValueError, match="control characters"):
        render.systemd_quote("/a\nExecStartPre=/bin/evil")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_reads_back_an_awkward_executable_path(tmp_path: Path) -> None:
    # If the quoting were wrong, systemd would look for a different file and
    # `verify` would say the command is not executable.
    folder = tmp_path / "My Tools 100%" / "$HOME"
    folder.mkdir(parents=True)
    executable = folder / "lmkeeperd"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    params = UnitParams((str(executable),), tmp_path / "c.toml", tmp_path / "env", "daemon")
    unit = tmp_path / "lmkeeperd.service"
    unit.write_text(render.render_systemd_unit("system", params))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_plist_has_every_key_the_issue_asks_for(tmp_path: Path) -> None:
    log = tmp_path / "Library/Logs/lmkeeperd/lmkeeperd.log"
    params = PlistParams(EXEC, tmp_path / "config.toml", log)
    job = plistlib.loads(render.render_launchd_plist(params).encode())
    assert job["Label"] == render.LAUNCHD_LABEL
    assert job["ProgramArguments"] == [*EXEC, "run", "--config", f"{tmp_path}/config.toml"]
    program = Path(job["ProgramArguments"][0])
    assert program.is_absolute() and program.is_file() and os.access(program, os.X_OK)
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ProcessType"] == "Background"
    assert job["ThrottleInterval"] == render.LAUNCHD_THROTTLE_S
    assert job["StandardOutPath"] == job["StandardErrorPath"] == str(log)
    assert Path(job["StandardOutPath"]).parent.parts[-2:] == ("Logs", "lmkeeperd")
    assert job["EnvironmentVariables"] == {"PYTHONUNBUFFERED": "1"}


def test_the_plist_in_the_launchd_readme_is_what_the_generator_makes() -> None:
    readme = (REPO / "launchd" / "README.md").read_text(encoding="utf-8")
    shown = readme.split("```xml\n")[1].split("```")[0]
    you = Path("/Users/you")
    params = PlistParams(
        ("/Users/you/.local/bin/lmkeeperd",),
        you / "Library/Application Support/lmkeeperd/config.toml",
        you / "Library/Logs/lmkeeperd/lmkeeperd.log",
    )
    marker = InstallRecord(kind="marker", version="0.1.0")
    assert shown == render.render_launchd_plist(params, [marker])


def test_install_records_survive_both_formats(tmp_path: Path) -> None:
    records = [
        InstallRecord(kind="marker", version="0.1.0"),
        InstallRecord(kind="dir", path="/home/a--b/x y"),
        InstallRecord(kind="file", path="/home/a/c.toml", sha256="ab" * 32),
    ]
    unit = render.render_systemd_unit("user", UnitParams(EXEC, tmp_path, tmp_path), records)
    plist = render.render_launchd_plist(PlistParams(EXEC, tmp_path, tmp_path / "l"), records)
    assert render.parse_install_records(unit) == records
    assert render.parse_install_records(plist) == records
    plistlib.loads(plist.encode())  # "--" in a path must not break the XML comment
    assert render.parse_install_records(render.load_template("user")) == []


# --- finding the installation ----------------------------------------------------


def test_console_script_path_is_kept_without_resolving_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "venv/bin/lmkeeperd"
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    link = tmp_path / "bin/lmkeeperd"
    link.parent.mkdir()
    link.symlink_to(real)
    assert installed_command(str(link), "/nowhere/python") == (str(link),)


def test_without_the_console_script_the_one_beside_the_interpreter_is_used() -> None:
    venv_bin = Path(sys.executable).parent
    assert installed_command("-c", sys.executable) == (str(venv_bin / "lmkeeperd"),)


def test_with_no_script_anywhere_python_dash_m_is_used(tmp_path: Path) -> None:
    python = tmp_path / "python3"
    assert installed_command("-c", str(python)) == (str(python), "-m", "lmkeeperd")


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
