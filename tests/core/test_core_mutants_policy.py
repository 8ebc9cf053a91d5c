"""L23's nearest keys at their edges: what a refused selection suggests, in which order.

Written against surviving mutants of policy.py (docs/testing.md, "Mutation testing of
the core")."""

from __future__ import annotations

from lmkeeperd.core.policy import nearest_keys


def test_L23_a_blank_key_has_no_nearest_keys() -> None:
    assert nearest_keys("  ", ["qwen/qwen3-4b-2507"]) == ()


def test_L23_a_key_exactly_half_similar_is_offered() -> None:
    # difflib's ratio of "abcd" and "abxy" is 2 * 2 / 8 = 0.5: similar enough.
    assert nearest_keys("abcd", ["abxy"]) == ("abxy",)


def test_L23_three_typed_characters_all_in_a_key_offer_it() -> None:
    # "qwe" is all in the key but far from similar (ratio 0.29): three characters suffice.
    assert nearest_keys("qwe", ["qwen/qwen3-4b-2507"]) == ("qwen/qwen3-4b-2507",)
    assert nearest_keys("qw", ["qwen/qwen3-4b-2507"]) == ()


def test_L23_among_keys_holding_all_that_was_typed_the_most_similar_comes_first() -> None:
    long, short = "qwen/qwen3-4b-instruct-2507", "qwen/qwen3-4b"
    assert nearest_keys("qwen3", [long, short]) == (short, long)
    assert nearest_keys("qwen3", [short, long]) == (short, long)
