"""The config's types: the built-in defaults, the example file, frozen values (config/types.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lmkeeperd.config import (
    LOAD_SETTINGS,
    Config,
    ControlConfig,
    LogConfig,
    MemoryConfig,
    MetricsConfig,
    ModelConfig,
    ProxyConfig,
    ServerConfig,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


# ---------------------------------------------------------------- defaults


def test_built_in_defaults() -> None:
    config = Config()
    assert config.server == ServerConfig(
        url="http://127.0.0.1:1234",
        api_token_env="LM_API_TOKEN",
        request_timeout=10.0,
        load_timeout=600.0,
        reconcile_interval=15.0,
    )
    assert config.model == ModelConfig(
        selected="",
        auto_load=True,
        idle_timeout=1800.0,
        switch_debounce=0.3,
        draft_model="",
        unload_on_exit=True,
        shutdown_timeout=2.0,
        busy_switch_wait=120.0,
        load={},
    )
    assert config.memory == MemoryConfig(budget_fraction=0.8)
    assert config.control == ControlConfig(socket="")
    assert config.log == LogConfig(level="info", format="auto")


def test_empty_file_is_the_defaults() -> None:
    assert parse_config("") == Config()
    assert parse_config("# nothing but a comment\n[server]\n[model.load]\n") == Config()


def test_example_file_is_exactly_the_defaults() -> None:
    assert parse_config(EXAMPLE.read_text(encoding="utf-8"), source=str(EXAMPLE)) == Config()


def test_example_file_shows_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = [
        f.name
        for c in (
            ServerConfig,
            ModelConfig,
            MemoryConfig,
            ControlConfig,
            ProxyConfig,
            MetricsConfig,
            LogConfig,
        )
        for f in dataclasses.fields(c)
    ]
    for key in [*(k for k in keys if k != "load"), *LOAD_SETTINGS]:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key
    tables = ("[server]", "[model]", "[model.load]", "[memory]", "[control]", "[proxy]")
    for table in (*tables, "[metrics]", "[log]"):
        assert f"\n{table}\n" in text


def test_config_is_frozen() -> None:
    config = parse_config("[model.load]\ncontext_length = 4096\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.selected = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.model.load["context_length"] = 1  # type: ignore[index]


def test_interface_example_parses() -> None:
    config = parse_config(
        """
[server]
url = "http://127.0.0.1:1234"
api_token_env = "LM_API_TOKEN"
request_timeout = "10s"
load_timeout = "10m"

[model]
selected = "qwen/qwen3-4b-2507"
auto_load = true
idle_timeout = "30m"
switch_debounce = "300ms"
draft_model = ""
unload_on_exit = true
shutdown_timeout = "2s"

[model.load]
context_length = 8192
flash_attention = true

[memory]
budget_fraction = 0.8

[control]
socket = ""

[log]
level = "info"
format = "auto"
"""
    )
    assert config.model.selected == "qwen/qwen3-4b-2507"
    assert config.model.load == {"context_length": 8192, "flash_attention": True}
    assert config.server.load_timeout == 600.0


def test_every_load_setting_is_accepted() -> None:
    config = parse_config(
        "[model.load]\ncontext_length = 4096\neval_batch_size = 256\nflash_attention = false\n"
        "num_experts = 8\noffload_kv_cache_to_gpu = true\n"
    )
    assert config.model.load == {
        "context_length": 4096,
        "eval_batch_size": 256,
        "flash_attention": False,
        "num_experts": 8,
        "offload_kv_cache_to_gpu": True,
    }


def test_values_are_normalised() -> None:
    config = parse_config(
        '[server]\nurl = " https://lm.example:8443/ "\napi_token_env = " MY_TOKEN "\n'
        '[model]\nselected = "  qwen/qwen3-4b-2507 \\n"\ndraft_model = " qwen/qwen2.5-0.5b "\n'
        '[log]\nlevel = "DEBUG"\nformat = " Json"\n[memory]\nbudget_fraction = 1\n'
    )
    assert config.server.url == "https://lm.example:8443"
    assert config.server.api_token_env == "MY_TOKEN"
    assert config.model.selected == "qwen/qwen3-4b-2507"
    assert config.model.draft_model == "qwen/qwen2.5-0.5b"
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert config.memory.budget_fraction == 1.0


def test_socket_path_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = parse_config('[control]\nsocket = "~/lmk.sock"\n')
    assert config.control.socket == str(tmp_path / "lmk.sock")
