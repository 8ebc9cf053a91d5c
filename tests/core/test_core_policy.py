"""The pure decisions in lmkeeperd/core/policy.py: adopt-or-load, the proxy verdict, L23."""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Adopt,
    EngineChanged,
    KnownKey,
    Load,
    Missing,
    Select,
    Shutdown,
    State,
    StreamStarted,
    UncheckedKey,
    UnknownKey,
    Verdict,
    adopt_or_load,
    check_selection,
    proxy_verdict,
)

A, B = "qwen/qwen3-4b-2507", "meta/llama-3.1-8b"
SERVER = "http://127.0.0.1:1234"


# --- adopt_or_load (L17) --------------------------------------------------------


def test_a_model_the_server_does_not_list_is_missing_with_its_name_and_the_server() -> None:
    plan = adopt_or_load(A, None, frozenset(), server=SERVER)
    assert isinstance(plan, Missing)
    assert repr(A) in plan.message and SERVER in plan.message and "lms ls" in plan.message


def test_a_listed_model_without_instances_is_loaded() -> None:
    assert adopt_or_load(A, (), frozenset(), server=SERVER) == Load()


def test_an_existing_instance_is_adopted_the_first_listed() -> None:
    assert adopt_or_load(A, ("a:1", "a:2"), frozenset(), server=SERVER) == Adopt("a:1")


def test_instances_being_unloaded_are_never_adopted() -> None:
    assert adopt_or_load(A, ("a:1", "a:2"), {"a:1"}, server=SERVER) == Adopt("a:2")
    assert adopt_or_load(A, ("a:1", "a:2"), {"a:1", "a:2"}, server=SERVER) == Load()


# --- proxy_verdict --------------------------------------------------------------


def loaded(model: str, **settings: object) -> Harness:
    """A core with `model` loaded by lmkeeperd."""
    h = Harness(switch_debounce=0, **settings)
    (load,) = h.loads(h.send(Select(model)))
    h.load_ok(load)
    assert h.core.state is State.LOADED
    return h


def test_the_loaded_model_is_ready_and_stays_ready_while_streaming() -> None:
    h = loaded(A)
    assert proxy_verdict(h.core, A, "llm") is Verdict.READY
    h.send(StreamStarted(1))
    assert h.core.state is State.STREAMING
    assert proxy_verdict(h.core, A, "llm") is Verdict.READY


def test_another_model_or_one_still_loading_needs_a_switch() -> None:
    h = loaded(A)
    assert proxy_verdict(h.core, B, "llm") is Verdict.SWITCH
    h.send(Select(B))
    assert h.core.model == B or h.core.pending == B
    assert proxy_verdict(h.core, B, "llm") is Verdict.SWITCH  # not loaded yet
    assert proxy_verdict(Harness().core, A, "llm") is Verdict.SWITCH  # nothing loaded


@pytest.mark.parametrize("model_type", [None, "embedding", "embeddings"])
def test_unlisted_and_embedding_models_pass(model_type: str | None) -> None:
    h = loaded(A)
    assert proxy_verdict(h.core, B, model_type) is Verdict.PASS


def test_hands_off_stopped_or_auto_load_off_pass() -> None:
    h = loaded(A)
    h.send(EngineChanged("ollama"))
    assert proxy_verdict(h.core, B, "llm") is Verdict.PASS
    h = loaded(A)
    h.send(Shutdown())
    assert proxy_verdict(h.core, A, "llm") is Verdict.PASS
    h = Harness(switch_debounce=0, auto_load=False)
    assert proxy_verdict(h.core, A, "llm") is Verdict.PASS


# --- check_selection (L23) ------------------------------------------------------

CATALOG = frozenset({A, B, "qwen/qwen2.5-0.5b-instruct", "text-embedding-nomic"})


def test_L23_a_listed_key_is_known() -> None:
    assert check_selection(A, CATALOG) == KnownKey()
    assert check_selection(f"  {A} ", CATALOG) == KnownKey()  # keys are trimmed, as Select does


def test_L23_an_unlisted_key_is_refused_with_the_nearest_keys_first() -> None:
    verdict = check_selection("qwen/qwen3-4b", CATALOG)
    assert isinstance(verdict, UnknownKey)
    assert verdict.model == "qwen/qwen3-4b" and verdict.nearest[0] == A
    assert "'qwen/qwen3-4b'" in verdict.message and A in verdict.message


def test_L23_nearest_keys_ignore_case_but_keep_the_catalogs_spelling() -> None:
    verdict = check_selection("QWEN/QWEN3-4B-2507", CATALOG)
    assert isinstance(verdict, UnknownKey) and verdict.nearest[0] == A


def test_L23_nothing_near_means_no_suggestion_but_still_a_refusal() -> None:
    verdict = check_selection("zzzzzzzz", CATALOG)
    assert isinstance(verdict, UnknownKey) and verdict.nearest == ()
    assert "did you mean" not in verdict.message


def test_L23_at_most_three_suggestions() -> None:
    many = frozenset(f"org/model-{i}" for i in range(10))
    verdict = check_selection("org/model-", many)
    assert isinstance(verdict, UnknownKey) and len(verdict.nearest) == 3


def test_L23_without_a_catalog_the_selection_is_unchecked_not_refused() -> None:
    assert check_selection("anything/at-all", None) == UncheckedKey()


def test_L23_an_empty_catalog_refuses_everything() -> None:
    # A server that lists nothing has nothing to load: that is an answer, not an outage.
    assert isinstance(check_selection(A, frozenset()), UnknownKey)
