"""Service units and the LaunchAgent plist as `service/render.py` writes them."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest
from unit_reader import unit_settings

from lmkeeperd.service import render
from lmkeeperd.service.render import InstallRecord, PlistParams, UnitParams
from lmkeeperd.service.target import installed_command

REPO = Path(__file__).resolve().parents[2]
EXEC = installed_command()


@pytest.mark.parametrize("scope", ["user", "system"])
def test_repo_root_unit_files_are_the_packaged_templates(scope: render.Scope) -> None:
    root_copy = REPO / "systemd" / render.TEMPLATE_NAMES[scope]
    assert root_copy.read_text(encoding="utf-8") == render.load_template(scope)


def test_repo_launchd_template_is_the_packaged_one() -> None:
    root_copy = REPO / "launchd" / render.PLIST_TEMPLATE
    assert root_copy.read_text(encoding="utf-8") == render.load_plist_template()


def _without_comments(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if not line.startswith("<!--"))


@pytest.mark.parametrize(
    ("argv", "environment"),
    [
        (("/Users/you/.local/bin/lmkeeperd",), {}),
        (
            ("/Users/A & B <x>/venv/bin/python3", "-m", "lmkeeperd"),
            {"LM_API_TOKEN": "a<b>&c", "ZED": "é ü", "AAA": ""},
        ),
    ],
)
def test_the_template_renders_what_plistlib_would_write(
    argv: tuple[str, ...], environment: dict[str, str]
) -> None:
    # The template is filled by text substitution; plistlib is the reference for what a
    # plist with these values is, byte for byte (escapes, order, indentation).
    params = PlistParams(
        argv, Path("/Users/you/My Config & co/c.toml"), Path("/Users/you/L<o>g.log"), environment
    )
    job = {
        "Label": render.LAUNCHD_LABEL,
        "ProgramArguments": [*argv, "run", "--config", "/Users/you/My Config & co/c.toml"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Background",
        "ThrottleInterval": render.LAUNCHD_THROTTLE_S,
        "StandardOutPath": "/Users/you/L<o>g.log",
        "StandardErrorPath": "/Users/you/L<o>g.log",
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1", **environment},
    }
    rendered = render.render_launchd_plist(params, [InstallRecord(kind="marker", version="9")])
    assert plistlib.loads(rendered.encode()) == job
    assert _without_comments(rendered) == plistlib.dumps(job, sort_keys=True).decode()


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
