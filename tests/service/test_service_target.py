"""Which command a service runs: `service/target.py` finding this installation."""

from __future__ import annotations

import sys
from pathlib import Path

from lmkeeperd.service.target import installed_command


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
