"""The pure decisions in lmkeeperd/core/policy.py: adopt-or-load and the proxy verdict."""

from __future__ import annotations

import pytest
from core_harness import Harness

from lmkeeperd.core import (
    Adopt,
    EngineChanged,
    Load,
    Missing,
    Select,
    Shutdown,
    State,
    StreamStarted,
    Verdict,
    adopt_or_load,
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
