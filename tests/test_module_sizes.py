"""Modules and test files stay small enough to read in one sitting.

No module of lmkeeperd/ over 450 lines, but the core's rules in
core/machine.py (at most 700, as h11 keeps its rules in one file); no test
file over 600 lines. A file that grows past its limit is split by topic.
"""

from __future__ import annotations

from pathlib import Path

import lmkeeperd

PACKAGE = Path(lmkeeperd.__file__).parent
TESTS = Path(__file__).parent
LIMITS = {PACKAGE / "core" / "machine.py": 700}
MODULE_LIMIT = 450
TEST_LIMIT = 600


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _over(paths: list[Path], default: int) -> list[str]:
    return [
        f"{p}: {n} lines (limit {LIMITS.get(p, default)})"
        for p in sorted(paths)
        if (n := _lines(p)) > LIMITS.get(p, default)
    ]


def test_no_module_is_over_its_limit() -> None:
    assert _over(list(PACKAGE.rglob("*.py")), MODULE_LIMIT) == []


def test_no_test_file_is_over_its_limit() -> None:
    assert _over(list(TESTS.rglob("*.py")), TEST_LIMIT) == []


def test_the_check_sees_a_file_over_its_limit(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    long.write_text("x = 1\n" * (MODULE_LIMIT + 1), encoding="utf-8")
    assert _over([long], MODULE_LIMIT) == [f"{long}: {MODULE_LIMIT + 1} lines (limit 450)"]
