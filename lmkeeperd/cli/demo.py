"""`lmkeeperd demo`: the daemon against the bundled LM Studio emulator.

Everything lives in a fresh temporary folder (config, socket, persisted
selection), so the demo never touches a real installation's state, and the
commands it prints work from any other terminal as typed: they name this very
`lmkeeperd` by its absolute path unless the shell finds that same file by name
(a venv that is not activated is the usual case).

It runs with `max_loaded = 2` and the emulator's embedding model pinned (L24,
L25): select two models in turn and both stay loaded beside the pinned one; a
third evicts the one used least recently.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from lmkeeperd import logs
from lmkeeperd.config import load_config
from lmkeeperd.emulator import Emulator, default_catalog

DEMO_MODEL = "qwen/qwen3-4b-2507"
DEMO_SECOND = "meta-llama/llama-3.1-8b-instruct"
DEMO_PINNED = "text-embedding-nomic-embed-text-v1.5"
DEMO_MAX_LOADED = 2


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_demo_config(folder: Path, server_url: str, idle_timeout: str) -> Path:
    config = folder / "config.toml"
    config.write_text(
        "# Written by `lmkeeperd demo`; edit it while the demo runs to see live reloads.\n"
        "[server]\n"
        f"url = {_toml_string(server_url)}\n"
        'reconcile_interval = "5s"\n\n'
        "[model]\n"
        f"idle_timeout = {_toml_string(idle_timeout)}\n"
        "# Two selected models stay loaded at once; the embedding model always (L24, L25).\n"
        f"max_loaded = {DEMO_MAX_LOADED}\n"
        f"pinned = [{_toml_string(DEMO_PINNED)}]\n\n"
        "[control]\n"
        f"socket = {_toml_string(str(folder / 'lmkeeperd.sock'))}\n",
        encoding="utf-8",
    )
    return config


def command_word(argv0: str | None = None, path: str | None = None) -> str:
    """How to type this `lmkeeperd` in another terminal: its name where PATH finds this
    same file, else its absolute path (or `python -m lmkeeperd`), quoted for a shell."""
    from lmkeeperd.service.target import installed_command

    argv = installed_command(argv0)
    found = shutil.which("lmkeeperd", path=path)
    if len(argv) == 1 and found is not None:
        try:
            if os.path.samefile(found, argv[0]):
                return "lmkeeperd"
        except OSError:
            pass
    return shlex.join(argv)


def instructions(config_file: Path, lmkeeperd: str) -> str:
    """The commands to try from another terminal, each working as typed."""
    return (
        "In another terminal:\n"
        f"  export LMKEEPERD_CONFIG={shlex.quote(str(config_file))}\n"
        f"  {lmkeeperd} select {DEMO_MODEL}\n"
        f"  {lmkeeperd} status\n"
        f"  {lmkeeperd} select {DEMO_SECOND}   # a second model, loaded beside the first\n"
        f"  {lmkeeperd} status   # both resident, and the pinned {DEMO_PINNED}\n"
        f"  {lmkeeperd} select {DEMO_MODEL}   # already resident: no load at all\n"
        f"  {lmkeeperd} models   # resident models marked\n"
    )


def run_demo(idle_timeout: str = "60s", load_delay: float = 2.0) -> int:
    """The `demo` command's handler."""
    from lmkeeperd.daemon import assemble

    # A short path under /tmp: socket paths are limited to 104-108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="lmkd-", dir="/tmp" if os.path.isdir("/tmp") else None))
    catalog = default_catalog()
    emulator = Emulator(catalog, load_delay=load_delay)
    emulator.start()
    try:
        config_file = write_demo_config(folder, emulator.url, idle_timeout)
        config = load_config(config_file)
        models = ", ".join(m.key for m in catalog if m.type == "llm")
        print(
            f"lmkeeperd demo: LM Studio emulator at {emulator.url}, loads take {load_delay:g}s,\n"
            f"idle eject after {idle_timeout}, max_loaded = {DEMO_MAX_LOADED}, "
            f"{DEMO_PINNED} pinned.\nModels: {models}\n\n"
            f"{instructions(config_file, command_word())}\n"
            "Ctrl-C stops the demo.\n",
            flush=True,
        )
        logs.setup(config.log.level, config.log.format)

        async def main() -> int:
            # Its state in the demo's folder: the user's real selection stays untouched.
            daemon = assemble(config, config_file, hangup_stops=True, state_dir=folder)
            return await daemon.run()

        return asyncio.run(main())
    finally:
        emulator.stop()
        shutil.rmtree(folder, ignore_errors=True)
