"""load_config reads defensively: regular files only, capped, never blocking;
an empty file is an error, never every default; a named file must exist; and
`inject_token` only on a loopback proxy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmkeeperd.config import Config, load_config, parse_config
from lmkeeperd.errors import ConfigEmpty, ConfigError
from lmkeeperd.fileio import CONFIG_CAP


def problems_of(path: Path, **kwargs: bool) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return str(caught.value)


def test_a_missing_default_file_is_every_default_but_a_named_one_is_an_error(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope.toml"
    assert load_config(missing) == Config()
    said = problems_of(missing, required=True)
    assert str(missing) in said and "no such file" in said


@pytest.mark.parametrize("content", [b"", b"   \n\t\n"])
def test_an_empty_file_is_config_empty_not_every_default(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigEmpty) as caught:
        load_config(path)
    assert "the file is empty" in str(caught.value) and str(path) in str(caught.value)


def test_a_file_of_comments_only_is_a_deliberate_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# every default, on purpose\n", encoding="utf-8")
    assert load_config(path) == Config()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    os.mkfifo(path)
    said = problems_of(path)  # a blocking open would hang here: no writer ever comes
    assert "the file is a FIFO" in said and said.count(str(path)) == 1


def test_a_file_over_the_cap_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with open(path, "wb") as f:
        f.truncate(CONFIG_CAP + 1)
    assert f"{CONFIG_CAP + 1} bytes" in problems_of(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "directory" in problems_of(tmp_path)


@pytest.mark.parametrize("listen", ["0.0.0.0:1235", "[::]:1235", "192.168.1.5:1235", "box:1235"])
def test_inject_token_on_a_proxy_others_can_reach_is_an_error_naming_the_key(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[proxy]\nlisten = "{listen}"\ninject_token = true\n')
    (problem,) = caught.value.problems
    assert problem.startswith("line 3: proxy.inject_token:") and "loopback" in problem
    assert listen in problem


@pytest.mark.parametrize("listen", ["127.0.0.1:1235", "[::1]:1235", "localhost:0"])
def test_inject_token_on_a_loopback_proxy_is_fine(listen: str) -> None:
    config = parse_config(f'[proxy]\nlisten = "{listen}"\ninject_token = true\n')
    assert config.proxy.inject_token


def test_a_non_loopback_proxy_without_inject_token_is_fine() -> None:
    assert parse_config('[proxy]\nlisten = "0.0.0.0:1235"\n').proxy.listen == "0.0.0.0:1235"
