"""The words of two warnings a person reads, and when they come (L21, L24-L26).

Against surviving mutants of server_rules.py (`_warn_if_blind`) and thrash.py
(`ThrashWatch.switched`). Times are explicit.
"""

from __future__ import annotations

from core_harness import Harness

from lmkeeperd.core import ActivitySource, Select
from lmkeeperd.core.thrash import WINDOW_S, ThrashWatch

A, B, C, D = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b", "google/gemma-3-12b", "openai/gpt-20b"

BLIND = (
    "LM Studio's activity cannot be read: clients that talk to LM Studio directly "
    "are invisible, and idle eject may unload a model they use. Use LM Studio 0.3.27 "
    "or newer, check [server] api_token_env, or send clients through lmkeeperd's proxy"
)


def test_L21_the_blind_spot_warning_says_what_to_do_once_even_with_a_one_second_eject() -> None:
    h = Harness(switch_debounce=0, idle_timeout=1)
    out = h.send(ActivitySource(False, "no token"), at=1)
    (warning,) = h.events("activity_blind", out)
    assert warning["advice"] == BLIND
    assert h.events("activity_blind", h.send(Select(A), at=2)) == []  # once


def alternate(watch: ThrashWatch, models: list[str], *, start: float = 0.0) -> list[object]:
    return [watch.switched(models[i % len(models)], start + i, max_loaded=1) for i in range(7)]


def test_L24_thrashing_between_three_models_asks_for_room_for_them_all() -> None:
    *quiet, fields = alternate(ThrashWatch(), [A, B, C])
    assert quiet == [None] * 6 and isinstance(fields, dict)
    assert fields["hint"] == (
        f"switches keep alternating between {', '.join(sorted([A, B, C]))}: each one "
        "unloads and loads again; max_loaded = 3 or a larger memory budget would keep "
        "them all loaded"
    )


def test_L24_thrashing_asks_for_one_more_than_max_loaded_when_that_is_more() -> None:
    watch = ThrashWatch()
    fields = [watch.switched([A, B][i % 2], i, max_loaded=3) for i in range(7)][-1]
    assert isinstance(fields, dict) and "max_loaded = 4 or a larger" in fields["hint"]


def test_L24_one_model_or_four_is_no_thrashing() -> None:
    assert alternate(ThrashWatch(), [A]) == [None] * 7  # reloading one model is no switch
    assert alternate(ThrashWatch(), [A, B, C, D]) == [None] * 7  # more than 3 models


def test_L24_a_switch_exactly_a_window_old_no_longer_counts() -> None:
    watch = ThrashWatch()
    watch.switched(A, 0.0, max_loaded=1)  # out of the window at WINDOW_S
    for i in range(1, 6):
        assert watch.switched([B, A][i % 2], WINDOW_S - 6 + i, max_loaded=1) is None
    assert watch.switched(B, WINDOW_S, max_loaded=1) is None  # 6 in the window, not 7
