"""The last selection made over the socket, kept across daemon restarts.

Stored as a small JSON file in the user state folder, together with the
config file's `selected` value at the time. At start, the stored selection
wins only while the config's `selected` is still what it was then: a later
edit of `selected` in the config file wins over it (interface contract).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class StoredSelection:
    model: str
    config_selected: str  # the config file's `selected` when this was stored


def load(path: Path) -> StoredSelection | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model, config_selected = data["model"], data["config_selected"]
        if isinstance(model, str) and isinstance(config_selected, str) and model.strip():
            return StoredSelection(model.strip(), config_selected)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("selection_store_unreadable", path=str(path), error=str(e))
    return None


def save(path: Path, selection: StoredSelection) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = {"model": selection.model, "config_selected": selection.config_selected}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".selection-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        log.warning("selection_store_failed", path=str(path), error=str(e))


def initial_selection(config_selected: str, stored: StoredSelection | None) -> str:
    """What to select at start: the socket's last choice unless the config changed since."""
    if stored is not None and stored.config_selected == config_selected:
        return stored.model
    return config_selected


def received(model: str, source: str, **where: object) -> None:
    """Log where a selection came from (issue 13), at debug: `socket` (with the client's
    pid and process name), `config`, `restored` (the stored file) or `proxy`."""
    log.debug("selection_received", model=model.strip(), source=source, **where)
