"""L24, L25 in the metrics (daemon/metrics.py): residents, their estimates, the budget,
evictions by reason, refusals; read back with test_metrics.py's independent parser."""

from __future__ import annotations

from test_metrics import parse_exposition, sample, snapshot

from lmkeeperd.daemon.metrics import Metrics

A = "qwen/qwen3-4b-2507"
E = "text-embedding-nomic-embed-text-v1.5"


def test_residents_their_estimates_and_the_budget_are_gauges() -> None:
    text = Metrics().render(
        snapshot(
            residents=((A, 2.9e9, False), (E, 0.2e9, True), ("x/none", None, False)),
            budget_bytes=19.2e9,
            budget_used_bytes=3.1e9,
        )
    )
    _types, samples = parse_exposition(text)
    assert sample(samples, "lmkeeperd_residents") == 3
    assert sample(samples, "lmkeeperd_resident_estimated_bytes", model=A, pinned="false") == 2.9e9
    assert sample(samples, "lmkeeperd_resident_estimated_bytes", model=E, pinned="true") == 0.2e9
    assert not any(
        k[0] == "lmkeeperd_resident_estimated_bytes" and ("model", "x/none") in k[1]
        for k in samples
    )
    assert sample(samples, "lmkeeperd_budget_bytes") == 19.2e9
    assert sample(samples, "lmkeeperd_budget_used_bytes") == 3.1e9


def test_no_budget_no_budget_sample() -> None:
    _types, samples = parse_exposition(Metrics().render(snapshot(budget_bytes=None)))
    assert not any(name == "lmkeeperd_budget_bytes" for name, _ in samples)
    assert sample(samples, "lmkeeperd_residents") == 0


def test_evictions_by_reason_refusals_and_thrashing_are_counted() -> None:
    metrics = Metrics()
    for reason in ("max_loaded", "max_loaded", "budget", "refused by LM Studio"):
        metrics.observe("evicted", {"model": A, "instance_id": A, "reason": reason, "for": E})
    metrics.observe("load_refused", {"model": A, "message": "insufficient system resources"})
    metrics.observe("thrashing", {"models": [A, E]})
    types, samples = parse_exposition(metrics.render(snapshot()))
    assert types["lmkeeperd_evictions_total"] == "counter"
    assert sample(samples, "lmkeeperd_evictions_total", reason="max_loaded") == 2
    assert sample(samples, "lmkeeperd_evictions_total", reason="budget") == 1
    assert sample(samples, "lmkeeperd_evictions_total", reason="refused by LM Studio") == 1
    assert sample(samples, "lmkeeperd_load_refusals_total") == 1
    assert sample(samples, "lmkeeperd_thrashing_warnings_total") == 1
