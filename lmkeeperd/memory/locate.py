"""Find a model's files in LM Studio's models folder.

LM Studio stores downloads as `<models_dir>/<publisher>/<repo>/<file>`, e.g.
`lmstudio-community/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf`, while the server names
the model by a key such as `qwen3-8b`, `lmstudio-community/qwen3-8b-gguf` or
`qwen/qwen3-8b@q4_k_m`. Keys are lowercased, may drop the repo's `-GGUF`
suffix, may carry an `@quantization` variant, and catalog keys
(`qwen/qwen3-4b-2507`) can name a folder under another publisher.

The resolver, in order:
1. `<publisher>/<repo>` from the key, matched case-insensitively and tolerant of
   `-GGUF`/`-MLX`, `_` versus `-`;
2. the same repo name under any publisher, when exactly one folder matches;
otherwise it gives up (the estimate then falls back to the server's figures).

In the folder it picks the GGUF whose name carries the quantization (from
`@variant`, else the server's `quantization.name`); among several candidates,
the one whose size is closest to the server's `size_bytes`. Split models
(`-00001-of-00003.gguf`) count as one, read from their first shard.
`mmproj-*.gguf` (vision projectors) are never the model. A folder without a
GGUF but with `config.json` is an MLX model.

Only directory listings are read here, two levels deep at most.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmkeeperd.lmstudio.models import ModelInfo

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_REPO_SUFFIX = re.compile(r"[-_](gguf|mlx)$")


def default_models_dirs() -> tuple[Path, ...]:
    """Where LM Studio keeps models unless told otherwise (newest layout first)."""
    home = Path.home()
    return (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models")


@dataclass(frozen=True, slots=True)
class ModelFiles:
    folder: Path
    # The model's GGUF shards in order (one entry for an unsplit file); the header
    # is in the first. Empty for an MLX folder.
    gguf: tuple[Path, ...] = ()
    config_json: Path | None = None
    # Why this file among several (for the estimate's notes), or "".
    choice: str = ""

    @property
    def size_bytes(self) -> int:
        return sum(_size(p) for p in self.gguf)


def find_model_files(model: ModelInfo, models_dir: Path) -> ModelFiles | None:
    """The files of `model` under `models_dir`, or None when nothing matches."""
    key, _, variant = model.key.strip().partition("@")
    publisher, _, repo = key.rpartition("/")
    publisher = publisher or (model.publisher or "")
    if not repo:
        return None
    wanted = _normalise(repo)
    publishers = _subdirs(models_dir)
    folder = None
    for pub_dir in publishers:
        if publisher and pub_dir.name.lower() == publisher.lower():
            folder = _match_repo(pub_dir, wanted)
            if folder is not None:
                break
    if folder is None:
        matches = [m for p in publishers if (m := _match_repo(p, wanted)) is not None]
        if len(matches) != 1:
            return None
        folder = matches[0]
    quant = variant or (model.quantization.name if model.quantization else None)
    return _pick_files(folder, quant, model.size_bytes)


def _normalise(name: str) -> str:
    lowered = name.strip().lower().replace("_", "-").replace(" ", "-")
    return _REPO_SUFFIX.sub("", lowered)


def _match_repo(publisher_dir: Path, wanted: str) -> Path | None:
    for repo_dir in _subdirs(publisher_dir):
        if _normalise(repo_dir.name) == wanted:
            return repo_dir
    return None


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(
                Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")
            )
    except OSError:
        return []


def _ggufs(folder: Path) -> list[Path]:
    # Some repos keep each quantization's shards in a subfolder (Q4_K_M/…).
    found: list[Path] = []
    for directory in (folder, *_subdirs(folder)):
        try:
            with os.scandir(directory) as entries:
                found += [
                    Path(e.path)
                    for e in entries
                    if e.is_file()
                    and e.name.lower().endswith(".gguf")
                    and not e.name.lower().startswith("mmproj")
                ]
        except OSError:
            continue
    return sorted(found)


def _group_shards(files: list[Path]) -> list[tuple[Path, ...]]:
    groups: dict[str, list[tuple[int, Path]]] = {}
    singles: list[tuple[Path, ...]] = []
    for path in files:
        match = _SHARD.match(path.name)
        if match is None:
            singles.append((path,))
            continue
        group_key = str(path.parent / match.group("stem")).lower()
        groups.setdefault(group_key, []).append((int(match.group("index")), path))
    shards = [tuple(p for _, p in sorted(members)) for members in groups.values()]
    return sorted(singles + shards)


def _quant_pattern(quant: str) -> re.Pattern[str]:
    # "q4_k" must not match "q4_k_m": no letter/digit, nor "_x", may follow it.
    escaped = re.escape(quant.lower().replace("-", "_"))
    return re.compile(rf"(?<![a-z0-9]){escaped}(?![a-z0-9]|_[a-z0-9])")


def _pick_files(folder: Path, quant: str | None, size_bytes: int | None) -> ModelFiles | None:
    groups = _group_shards(_ggufs(folder))
    if not groups:
        config = folder / "config.json"
        return ModelFiles(folder, config_json=config) if config.is_file() else None
    candidates = groups
    choice = ""
    if quant:
        pattern = _quant_pattern(quant)
        named = [g for g in groups if pattern.search(g[0].name.lower().replace("-", "_"))]
        if named:
            candidates = named
        elif len(groups) > 1:
            choice = f"no file named for {quant}"
    if len(candidates) > 1:
        if size_bytes:
            candidates = sorted(
                candidates, key=lambda g: abs(sum(_size(p) for p in g) - size_bytes)
            )
            choice = (choice + "; " if choice else "") + "picked the file closest in size"
        else:
            choice = (choice + "; " if choice else "") + "several files, picked the first"
    return ModelFiles(folder, gguf=candidates[0], choice=choice)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
