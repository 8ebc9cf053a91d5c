"""The last selection made over the socket, kept across daemon restarts.

Stored as a small JSON file in the user state folder, together with the
config file's `selected` value at the time. At start, the stored selection
wins only while the config's `selected` is still what it was then: a later
edit of `selected` in the config file wins over it (interface contract).

The file belongs to one daemon: its name carries a hash of the config file's
path (paths.selection_file), so a second daemon of the same user with its own
config never starts with the first one's selection. The per-user
`selection.json` of earlier versions is read once, by the daemon of the
default config path only, when that daemon has no file of its own yet.

Whatever is found at the path (a FIFO, a 1 GiB file, a folder), reading never
blocks and never reads more than fileio.STATE_CAP: anything else is a warning
and no selection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import structlog

from lmkeeperd import fileio, paths
from lmkeeperd.errors import UnsafeFileError
from lmkeeperd.status_types import RestoredSelection

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class StoredSelection:
    model: str
    config_selected: str  # the config file's `selected` when this was stored


def load(path: Path) -> StoredSelection | None:
    try:
        data = json.loads(fileio.read_small_file(path, fileio.STATE_CAP, what="selection file"))
        model, config_selected = data["model"], data["config_selected"]
        if isinstance(model, str) and isinstance(config_selected, str) and model.strip():
            return StoredSelection(model.strip(), config_selected)
        log.warning("selection_store_unreadable", path=str(path), error="no model key in it")
    except FileNotFoundError:
        return None
    except (OSError, UnsafeFileError, ValueError, KeyError, TypeError) as e:
        log.warning("selection_store_unreadable", path=str(path), error=str(e))
    return None


def save(path: Path, selection: StoredSelection, *, sync: bool = True) -> None:
    """Write atomically: a crash never leaves half a file. A failure is a warning only.

    `sync=False`: in place for the next start at once, on disk after `sync_saved`.
    """
    payload = {"model": selection.model, "config_selected": selection.config_selected}
    try:
        fileio.write_atomically(path, json.dumps(payload).encode("utf-8"), sync=sync)
    except OSError as e:
        log.warning("selection_store_failed", path=str(path), error=str(e))


def sync_saved(path: Path) -> None:
    """Put the selection `save(..., sync=False)` wrote on disk; a failure is a warning."""
    try:
        fileio.sync_file(path)
    except FileNotFoundError:
        return  # removed meanwhile (a refused selection put none back): nothing to keep
    except OSError as e:
        log.warning("selection_store_failed", path=str(path), error=str(e))


def load_for(config_path: Path, path: Path) -> tuple[StoredSelection | None, Path]:
    """The stored selection of the daemon of `config_path` (its file `path`), and where it was.

    Only the daemon of the default config path falls back to the old per-user file,
    and only while it has no file of its own: its first save makes its own file.
    """
    stored = load(path)
    if stored is not None or path.exists() or path.is_symlink():
        return stored, path
    if _same_file(config_path, paths.config_path()):
        legacy = paths.legacy_selection_file()
        return load(legacy), legacy
    return None, path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return False


def initial_selection(config_selected: str, stored: StoredSelection | None) -> str:
    """What to select at start: the socket's last choice unless the config changed since."""
    if stored is not None and stored.config_selected == config_selected:
        return stored.model
    return config_selected


def received(model: str, source: str, **where: object) -> None:
    """Log where a selection came from, at debug: `socket` (with the client's
    pid and process name), `config`, `restored` (the stored file) or `proxy`."""
    log.debug("selection_received", model=model.strip(), source=source, **where)


def restore(
    config_path: Path, path: Path, config_selected: str
) -> tuple[str, RestoredSelection | None]:
    """What to select at start, and the stored selection used (logged, shown in status)."""
    stored, where = load_for(config_path, path)
    initial = initial_selection(config_selected, stored)
    if stored is None or stored.config_selected != config_selected:
        return initial, None
    log.info("selection_restored", model=stored.model, file=str(where))
    if where != path:
        save(path, stored)  # the old per-user file: read once, then the daemon's own
    return initial, {"model": stored.model, "file": str(where)}
