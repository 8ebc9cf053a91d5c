"""The residency keys (L24-L26): `[model] max_loaded`, `pinned`, `switch`, `[memory] budget`;
their checks with line numbers, and what `settings_from` (daemon/wiring.py) makes of them."""

from __future__ import annotations

import pytest

from lmkeeperd.config import Config, parse_config
from lmkeeperd.daemon.wiring import budget_bytes, server_is_local, settings_from
from lmkeeperd.errors import ConfigError


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def test_defaults_keep_one_model_and_pin_nothing() -> None:
    config = Config()
    assert config.model.max_loaded == 1
    assert config.model.pinned == ()
    assert config.model.switch == "auto"
    assert config.memory.budget is None


def test_residency_keys_are_read() -> None:
    config = parse_config(
        "[model]\nmax_loaded = 3\n"
        'pinned = [" text-embedding-nomic-embed-text-v1.5 ", "a/b", "a/b"]\n'
        'switch = "Make-Before-Break"\n[memory]\nbudget = "12GB"\n'
    )
    assert config.model.max_loaded == 3
    assert config.model.pinned == ("text-embedding-nomic-embed-text-v1.5", "a/b")
    assert config.model.switch == "make-before-break"
    assert config.memory.budget == 12 * 10**9


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_loaded = 0", "model.max_loaded: must be greater than 0, got 0"),
        ("max_loaded = 1.5", "model.max_loaded: expected a whole number, got 1.5"),
        ('max_loaded = "2"', 'model.max_loaded: expected a whole number, got "2"'),
        ('pinned = "a/b"', "model.pinned: expected an array of model keys"),
        ("pinned = [1]", "model.pinned: item 1: expected a model key (a string), got 1"),
        ('pinned = ["a", " "]', "model.pinned: item 2: an empty model key"),
        (
            'switch = "fast"',
            'model.switch: expected one of auto, make-before-break, break-before-make, got "fast"',
        ),
    ],
)
def test_bad_model_residency_keys_name_key_and_line(line: str, message: str) -> None:
    (problem,) = problems_of(f"# mine\n[model]\n{line}\n")
    assert problem.startswith("line 3: "), problem
    assert message in problem


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"12 parsecs"', "memory.budget: bad size"),
        ("12", 'memory.budget: expected a size like "12GB"'),
        ('"0GB"', 'memory.budget: must be more than 0, got "0GB"'),
    ],
)
def test_bad_budget_names_key_and_line(value: str, message: str) -> None:
    (problem,) = problems_of(f"[memory]\nbudget = {value}\n")
    assert problem.startswith("line 2: "), problem
    assert message in problem


def test_empty_budget_means_the_fraction_of_this_machine() -> None:
    config = parse_config('[memory]\nbudget = ""\nbudget_fraction = 0.5\n')
    assert config.memory.budget is None
    assert budget_bytes(config, total_bytes=32 * 10**9) == 16 * 10**9


def test_an_absolute_budget_wins_over_the_fraction() -> None:
    config = parse_config('[memory]\nbudget = "10GB"\n')
    assert budget_bytes(config, total_bytes=32 * 10**9) == 10 * 10**9


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:1234", True),
        ("http://localhost:1234", True),
        ("http://[::1]:1234", True),
        ("http://192.168.1.20:1234", False),
        ("https://gpu-box.lan:1234", False),
    ],
)
def test_a_remote_server_without_a_budget_counts_models_only(url: str, local: bool) -> None:
    config = parse_config(f'[server]\nurl = "{url}"\n')
    assert server_is_local(config) is local
    assert (budget_bytes(config, total_bytes=10**10) is None) is not local
    remote_with_budget = parse_config(f'[server]\nurl = "{url}"\n[memory]\nbudget = "8GB"\n')
    assert budget_bytes(remote_with_budget, total_bytes=10**10) == 8 * 10**9


def test_settings_from_carries_residency_to_the_core() -> None:
    config = parse_config('[model]\nmax_loaded = 2\npinned = ["e/mbed"]\n')
    settings = settings_from(config, total_bytes=10**10)
    assert settings.max_loaded == 2
    assert tuple(settings.pinned) == ("e/mbed",)
