"""lmkeeperd/errors.py: one tree of deliberate errors, importable from where they were."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from lmkeeperd import errors
from lmkeeperd.control import protocol
from lmkeeperd.core import machine
from lmkeeperd.memory import gguf
from lmkeeperd.proxy import hooks

MOVED = [
    (protocol, "FrameError", errors.ProtocolError),
    (hooks, "SelectionError", errors.LmkeeperError),
    (machine, "LifecycleError", errors.LmkeeperError),
    (gguf, "GGUFError", errors.LmkeeperError),
]


@pytest.mark.parametrize(("module", "name", "parent"), MOVED)
def test_moved_errors_live_in_the_tree_and_keep_their_old_import(
    module: object, name: str, parent: type
) -> None:
    error = getattr(errors, name)
    assert error.__module__ == "lmkeeperd.errors"
    assert getattr(module, name) is error
    assert issubclass(error, parent)


def test_the_drawing_names_every_error_defined_here() -> None:
    drawing = inspect.getdoc(errors) or ""
    defined = [
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    ]
    assert "SelectionError" in defined
    for name in defined:
        assert name in drawing, name


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_errors_is_a_leaf_so_the_pure_core_may_import_it() -> None:
    assert _imported_modules(Path(errors.__file__)) == {"__future__"}
    core = Path(machine.__file__).parent
    for path in core.glob("*.py"):
        ours = {m for m in _imported_modules(path) if m.split(".")[0] == "lmkeeperd"}
        assert all(m.startswith("lmkeeperd.core") or m == "lmkeeperd.errors" for m in ours), path
