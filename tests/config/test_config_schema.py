"""Unknown keys and tables, named with a suggestion (config/schema.py)."""

from __future__ import annotations

import pytest

from lmkeeperd.config import parse_config
from lmkeeperd.errors import ConfigError


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[server]\nurl = "http://127.0.0.1:1234"\n\n'
            '[model]\nauto_load = true\nidle_timeuot = "30m"\n',
            "line 6: model.idle_timeuot: unknown key (did you mean idle_timeout?)",
        ),
        (
            "[model.load]\ncontxt_length = 8192\n",
            "line 2: model.load.contxt_length: unknown load setting (did you mean context_length? "
            "allowed: context_length, eval_batch_size, flash_attention, num_experts, "
            "offload_kv_cache_to_gpu)",
        ),
        (
            "[model.load]\nttl = 60\n",
            "line 2: model.load.ttl: unknown load setting (allowed: context_length, "
            "eval_batch_size, flash_attention, num_experts, offload_kv_cache_to_gpu)",
        ),
        (
            "[logs]\nlevel = 'info'\n",
            "line 1: logs: unknown table (did you mean log? known tables: "
            "server, model, memory, control, proxy, metrics, log)",
        ),
        (
            '[server]\nselected = "x"\n',
            "line 2: server.selected: unknown key here (did you mean model.selected?)",
        ),
        ('url = "http://x"\n', "line 1: url: unknown key here (did you mean server.url?)"),
        (
            "[memory]\nzzz = 1\n",
            "line 2: memory.zzz: unknown key (known keys: budget_fraction, budget, models_dir, "
            "pressure_eject_below, pressure_grace)",
        ),
        (
            "[model]\nload = { context_lenght = 1 }\n",
            "line 2: model.load.context_lenght: unknown load",
        ),
        (
            "model.auto_lod = true\n",
            "line 1: model.auto_lod: unknown key (did you mean auto_load?)",
        ),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion_and_line(text: str, problem: str) -> None:
    (found,) = problems_of(text)
    assert found.startswith(problem)
