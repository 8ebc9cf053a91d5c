"""Conventions through the real `lmkeeperd` command: --version, -h on every command,
one error prefix, flags shown as flags, shell completion (in a real bash, with model keys
from a real daemon), and the demo's printed commands run as typed."""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonProc

from lmkeeperd import __version__
from lmkeeperd.cli import table
from lmkeeperd.cli.table import Command, Group

pytestmark = pytest.mark.e2e

A = "qwen/qwen3-4b-2507"
PREFIX = "lmkeeperd: error: "


def lmk(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "LMKEEPERD_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lmkeeperd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def visible_rows() -> Iterator[list[str]]:
    for entry in table.COMMANDS:
        if isinstance(entry, Group):
            yield [entry.name]
            yield from ([entry.name, c.name] for c in entry.commands if not c.hidden)
        elif not entry.hidden:
            yield [entry.name]


def test_version() -> None:
    result = lmk("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"lmkeeperd {__version__}\n",
        "",
    )


@pytest.mark.parametrize("words", list(visible_rows()), ids=" ".join)
def test_dash_h_on_every_command_and_group(words: list[str]) -> None:
    result = lmk(*words, "-h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: lmkeeperd {' '.join(words)} ")
    # A flag is shown as a flag: no value placeholder after it (typer's `--json <bool>`).
    assert "<bool>" not in result.stdout and not re.search(
        r"--(json|system|dry-run) [A-Z]", result.stdout
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without argparse's usage lines (printed before its error line)."""
    lines = stderr.splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("usage:", " "))]


def test_every_error_has_the_one_prefix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nidle_timeout = "soon"\ncolour = 1\n')
    cases = [
        (("status", "--bogus"), 2),  # argparse: unknown option
        (("estimate", "m", "--context", "x"), 2),  # argparse: a value that does not convert
        (("select",), 2),  # argparse: a missing argument
        (("select", " ", "--config", str(bad)), 2),  # ours: an empty key
        (("status", "--config", str(tmp_path / "none.toml")), 3),  # no daemon
        (("config", "check", "--config", str(bad)), 2),  # every config problem, one a line
        (("completion", "tcsh"), 2),
        (("service", "install", "--run-as", "nobody", "--dry-run"), 2),  # the service errors
        (("service", "status", "--config", "x"), 2),  # takes no --config (interface.md)
    ]
    for args, code in cases:
        result = lmk(*args)
        assert result.returncode == code, (args, result.stderr)
        lines = _error_lines(result.stderr)
        assert lines, args
        assert all(line.startswith(PREFIX) for line in lines), (args, result.stderr)
    problems = _error_lines(lmk("config", "check", "--config", str(bad)).stderr)
    assert len(problems) == 2 and all(str(bad) in line for line in problems)
    usage = lmk("status", "--bogus").stderr
    assert "see `lmkeeperd status -h`" in usage  # the command's own help, not the top's
    unknown = lmk("bogus")
    assert unknown.returncode == 2 and "'status'" in unknown.stderr
    assert table.COMPLETE_MODELS not in unknown.stderr  # a helper, not a command to offer


# --- shell completion ------------------------------------------------------------


@pytest.fixture
def program(tmp_path: Path) -> Path:
    """An `lmkeeperd` program for the completion scripts to call back (COMP_WORDS[0])."""
    path = tmp_path / "bin" / "lmkeeperd"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m lmkeeperd "$@"\n')
    path.chmod(0o755)
    return path


def complete(program: Path, line: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers after `line` (a trailing space means a new, empty word)."""
    script = lmk("completion", "bash").stdout
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    words[0] = str(program)
    driver = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_lmkeeperd\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    full_env = {k: v for k, v in os.environ.items() if k != "LMKEEPERD_CONFIG"}
    full_env.update(env or {})
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", driver],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [w for w in result.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_of_commands_options_and_values(program: Path) -> None:
    top = complete(program, "lmkeeperd ")
    for entry in table.COMMANDS:
        hidden = isinstance(entry, Command) and entry.hidden
        assert (entry.name in top) != hidden, entry.name
    assert complete(program, "lmkeeperd st") == ["status"]
    assert complete(program, "lmkeeperd service ") == ["-h", "install", "uninstall", "status"]
    assert complete(program, "lmkeeperd status --") == ["--config", "--json"]
    assert complete(program, "lmkeeperd service status --") == ["--system"]
    assert complete(program, "lmkeeperd completion ") == ["bash", "zsh", "fish"]
    assert "--run-as" in complete(program, "lmkeeperd service install --r")
    assert "root" in complete(program, "lmkeeperd service install --system --run-as ro")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_model_keys_from_the_running_daemon(
    program: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory()
    env = {"LMKEEPERD_CONFIG": str(d.config_path)}
    # The daemon's `models` op lists the server's whole catalog, loaded or not.
    assert A in complete(program, "lmkeeperd select ", env)
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    assert A in complete(program, "lmkeeperd select ", env)
    assert A in complete(program, "lmkeeperd unload qw", env)
    # --config on the line wins over the environment, as for the command itself.
    assert A in complete(program, f"lmkeeperd select --config {d.config_path} ")
    assert d.stop() == 0
    started = time.monotonic()
    assert complete(program, "lmkeeperd select ", env) == []  # no daemon: silence
    print(f"completion with no daemon: {time.monotonic() - started:.2f} s")


def test_complete_models_is_silent_without_a_daemon(tmp_path: Path) -> None:
    result = lmk("_complete-models", "--config", str(tmp_path / "none.toml"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    result = lmk("_complete-models", "--config", str(bad))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_zsh_and_fish_scripts_name_every_command_and_option() -> None:
    zsh = lmk("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -F _lmkeeperd lmkeeperd" in zsh
    fish = lmk("completion", "fish").stdout
    for words in visible_rows():
        assert f"-a {words[-1]} " in fish, words
    for entry in table.COMMANDS:
        commands = entry.commands if isinstance(entry, Group) else (entry,)
        for command in (c for c in commands if not c.hidden):
            for opt in command.opts:
                shown = f"-l {opt.flag.removeprefix('--')}"
                assert (shown in fish) != opt.hidden, opt.flag


# --- the demo ----------------------------------------------------------------------


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


class _Demo:
    """`lmkeeperd demo` as a process, its output read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*argv, "demo", "--load-delay", "0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(
            target=_lines, args=(self.proc.stdout, self._lines), daemon=True
        )
        self._reader.start()
        self.printed: list[str] = []

    def wait_started(self) -> None:
        """Until the daemon listens: the instructions are printed before it starts."""
        deadline = time.monotonic() + 30
        while not any("daemon_started" in line for line in self.printed):
            assert time.monotonic() < deadline, "".join(self.printed)
            try:
                self.printed.append(self._lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                continue

    def commands(self) -> list[str]:
        start = self.printed.index("In another terminal:\n")
        end = next(i for i, line in enumerate(self.printed) if "Ctrl-C stops the demo" in line)
        commands = [line.split("#")[0].strip() for line in self.printed[start + 1 : end]]
        return [c for c in commands if c]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)  # the pipe's end: the demo has exited
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_the_demo_prints_commands_that_work_as_typed(tmp_path: Path) -> None:
    console_script = Path(sys.executable).parent / "lmkeeperd"
    if not console_script.exists():
        pytest.skip("needs the lmkeeperd console script beside the interpreter")
    env = {k: v for k, v in os.environ.items() if k != "LMKEEPERD_CONFIG"}
    # As after the README's first line: the venv is not activated.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != console_script.parent
    )
    demo = _Demo([str(console_script)], env)
    try:
        demo.wait_started()
        commands = demo.commands()
        assert commands[0].startswith("export LMKEEPERD_CONFIG=")
        assert all(shlex.split(c)[0] == str(console_script) for c in commands[1:]), commands
        shell = subprocess.run(
            ["bash", "--norc", "--noprofile", "-e", "-c", "\n".join(commands[:3])],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert shell.returncode == 0, shell.stderr
        assert f"selected {A}" in shell.stdout and "state" in shell.stdout
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(30) == 0
    finally:
        demo.close()


def test_the_demo_stops_when_its_terminal_hangs_up() -> None:
    # A daemon reloads its config on SIGHUP; the demo runs in a terminal, and a closed
    # terminal (SIGHUP) must stop it and clean up, not leave it running unseen.
    demo = _Demo([sys.executable, "-m", "lmkeeperd"])
    try:
        demo.wait_started()
        export = demo.commands()[0]
        folder = Path(shlex.split(export.split("=", 1)[1])[0]).parent
        assert folder.is_dir()
        demo.proc.send_signal(signal.SIGHUP)
        assert demo.proc.wait(30) == 0
        assert not folder.exists()  # the demo's state and socket went with it
    finally:
        demo.close()


# --- service, on this very machine --------------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemctl") is None or Path("/run/systemd/system").is_dir(),
    reason="needs systemctl on a machine where systemd is not PID 1",
)
def test_service_commands_say_unknown_where_systemd_is_not_pid_1(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    status = lmk("service", "status", env=env)
    assert status.returncode == 1
    assert "running: unknown (systemd is not PID 1 here)" in status.stdout
    assert "running: no ()" not in status.stdout
    assert status.stderr.startswith("lmkeeperd: warning: systemd is not running")
    dry = lmk("service", "install", "--dry-run", env=env)
    assert dry.returncode == 0
    assert dry.stdout.rstrip().endswith("service manager: unknown (systemd is not PID 1 here)")
    assert dry.stderr.startswith("lmkeeperd: warning: the real run would fail here")
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
