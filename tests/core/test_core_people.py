"""Core rules behind what a person sees: the nearest keys of a refused selection (L23),
closest first, and `--keep-alive default` (a selection back on `idle_timeout`). Explicit
`now` values, no sleeps."""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import Select, UnknownKey, check_selection
from lmkeeperd.core.policy import nearest_keys

A = "qwen/qwen3-4b-2507"
CATALOG = [
    "qwen/qwen3-32b",
    A,
    "qwen/qwen2.5-0.5b-instruct",
    "meta-llama/llama-3.1-8b-instruct",
    "google/gemma-3-12b",
]


def test_L23_nearest_keys_rank_the_key_that_holds_what_was_typed_first() -> None:
    verdict = check_selection("qwen/qwen3-4b", CATALOG)
    assert isinstance(verdict, UnknownKey)
    assert verdict.nearest[:2] == (A, "qwen/qwen3-32b")
    assert "did you mean qwen/qwen3-4b-2507, qwen/qwen3-32b" in verdict.message


@pytest.mark.parametrize(
    ("typed", "first"),
    [
        ("qwen3-4v", A),  # a typo: most of it is in order in the 4b key
        ("gemma", "google/gemma-3-12b"),  # a part of the key, shorter than difflib's cutoff
        ("META-LLAMA/llama-3.1-8b", "meta-llama/llama-3.1-8b-instruct"),
    ],
)
def test_L23_nearest_keys_closest_first(typed: str, first: str) -> None:
    assert nearest_keys(typed, CATALOG)[0] == first


def test_L23_nearest_keys_are_stable_and_few() -> None:
    assert nearest_keys("xyz", CATALOG) == ()
    assert nearest_keys("qwen", CATALOG) == nearest_keys("qwen", list(reversed(CATALOG)))
    assert len(nearest_keys("qwen/qwen", CATALOG)) == 3


def test_keep_alive_default_drops_the_selections_own_idle_timeout() -> None:
    h = Harness(switch_debounce=0, idle_timeout=1800)
    (load,) = h.loads(h.send(Select(A, keep_alive=30)))
    h.load_ok(load)
    h.send(Select(A), at=10)  # without a keep-alive: the earlier one stays
    assert h.core.keep_alive == 30
    h.send(Select(A, default_idle=True), at=20)
    assert h.core.keep_alive is None
    assert h.core.idle_eject_in(20) == pytest.approx(1800)
    assert h.unloads(h.tick(100)) == []
