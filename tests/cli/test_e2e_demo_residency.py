"""The demo shows residency (cli/demo.py; L24, L25): it runs with `max_loaded = 2` and a
pinned embedding model, and the commands it prints, run as typed, end with two selected
models and the pinned one resident."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from test_e2e_conventions import _Demo

from lmkeeperd.cli.demo import DEMO_MODEL, DEMO_PINNED, DEMO_SECOND

pytestmark = pytest.mark.e2e


def test_L24_the_demo_hints_select_two_models_and_status_shows_both_and_the_pinned() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LMKEEPERD_CONFIG"}
    demo = _Demo([sys.executable, "-m", "lmkeeperd"], env)
    try:
        demo.wait_started()
        commands = demo.commands()
        selects = [c for c in commands if " select " in f" {c} "]
        assert [c.split()[-1] for c in selects[:2]] == [DEMO_MODEL, DEMO_SECOND]
        assert sum(" status" in c for c in commands) >= 2
        # Each select waits for its load, so the script ends with both resident.
        script = (
            "\n".join(c + " --wait" if " select " in f" {c} " else c for c in commands)
            + f"\n{commands[1].split(' select ')[0]} status --json"
        )
        shell = subprocess.run(
            ["bash", "--norc", "--noprofile", "-e", "-c", script],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert shell.returncode == 0, shell.stderr
        status = json.loads(shell.stdout.strip().splitlines()[-1])
        resident = {r["model"]: r for r in status["resident"]}
        assert set(resident) == {DEMO_MODEL, DEMO_SECOND, DEMO_PINNED}, resident
        assert resident[DEMO_PINNED]["pinned"] and status["budget"]["max_loaded"] == 2
        assert "resident models:" in shell.stdout  # the human status printed the table
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(30) == 0
    finally:
        demo.close()
