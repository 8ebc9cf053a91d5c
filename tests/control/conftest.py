"""Fixtures of this folder's tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def folder() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108-byte limit of a socket path.
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="lk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
