"""CI's .ci/service-checks renders the units with an embedded Python program: keep it working.

It runs only in CI (systemd-analyze), after the test suite, so a module it imports that
moved would first show there; this runs the same program here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lmkeeperd.service import target

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "service-checks"


def _embedded_program() -> str:
    text = SCRIPT.read_text(encoding="utf-8")
    start = text.index("<<'PY'\n") + len("<<'PY'\n")
    return text[start : text.index("\nPY\n", start)]


def test_the_service_checks_program_renders_both_units(tmp_path: Path) -> None:
    for scope in ("system", "user"):
        (tmp_path / scope).mkdir()
    done = subprocess.run(
        [sys.executable, "-", str(tmp_path), "daemon"],
        input=_embedded_program(),
        capture_output=True,
        text=True,
        check=False,
    )
    # The suite runs after the README's `pip install -e '.[test]'`, which puts the console
    # script beside this interpreter: its absence is a failure here, as it is in CI.
    # Without it the units would fall back to `python -m lmkeeperd`: not what CI checks.
    executable = Path(sys.executable).absolute().parent / "lmkeeperd"
    assert executable.is_file(), f"no console script at {executable}: install the package"
    assert target.installed_command(argv0="pytest") == (str(executable),)
    assert done.returncode == 0, done.stderr
    for scope in ("system", "user"):
        unit = (tmp_path / scope / "lmkeeperd.service").read_text(encoding="utf-8")
        (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
        assert str(executable) in exec_start, exec_start
