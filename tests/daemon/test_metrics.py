"""Metrics (lmkeeperd/daemon/metrics.py): counted from events, rendered as Prometheus text.

`parse_exposition` below is an independent reader of the text format (0.0.4):
it checks the grammar line by line and the rules a scraper relies on (a TYPE
before a family's samples, one TYPE per family, counters ending in _total,
cumulative histogram buckets ending with +Inf equal to _count).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import httpx
import pytest
from daemon_harness import DaemonProc

from lmkeeperd.daemon.metrics import Metrics, Snapshot
from lmkeeperd.emulator import Emulator
from lmkeeperd.proxy import ProxyStats

A = "qwen/qwen3-4b-2507"

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text):
        raise AssertionError(f"not a number: {text!r}")
    return float(text)


def parse_exposition(text: str) -> tuple[dict[str, str], Samples]:
    """(family -> type, samples) from Prometheus text; AssertionError on anything malformed."""
    assert text.endswith("\n"), "the text must end with a newline"
    types: dict[str, str] = {}
    samples: Samples = {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            assert re.fullmatch(rf"# HELP {_NAME} .*", line), where
            continue
        if line.startswith("# TYPE "):
            match = re.fullmatch(rf"# TYPE ({_NAME}) (\w+)", line)
            assert match and match[2] in _TYPES, where
            assert match[1] not in types, f"second TYPE for {match[1]}"
            types[match[1]] = match[2]
            continue
        assert line and not line.startswith("#"), where
        match = _SAMPLE.fullmatch(line)
        assert match, where
        name, labels = match[1], frozenset(_LABEL_PAIR.findall(match[2] or ""))
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        family = family if family in types else name
        assert family in types, f"{where}: sample before its TYPE"
        if types[family] == "counter":
            assert name.endswith("_total"), f"{where}: counters end in _total"
        key = (name, labels)
        assert key not in samples, f"{where}: duplicate sample"
        samples[key] = _value(match[3])
    for family, kind in types.items():
        if kind == "histogram":
            buckets = sorted(
                (_value(dict(labels)["le"]), value)
                for (name, labels), value in samples.items()
                if name == family + "_bucket"
            )
            assert buckets and math.isinf(buckets[-1][0]), f"{family}: no +Inf bucket"
            counts = [value for _, value in buckets]
            assert counts == sorted(counts), f"{family}: buckets not cumulative"
            assert buckets[-1][1] == samples[(family + "_count", frozenset())]
    return types, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = {
        "version": "0.1.0",
        "state": "loaded",
        "model": A,
        "selected": A,
        "active_streams": 0,
        "server_reachable": True,
        "start_time": 1_700_000_000.5,
    }
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_events_are_counted() -> None:
    metrics = Metrics()
    metrics.observe("load_finished", {"model": A, "seconds": 3.2, "adopted": False, "draft": False})
    metrics.observe("load_finished", {"model": A, "seconds": 0.0, "adopted": True, "draft": False})
    metrics.observe(
        "load_finished", {"model": "d", "seconds": 0.7, "adopted": False, "draft": True}
    )
    metrics.observe("load_failed", {"model": A, "error": "x", "draft": False})
    metrics.observe("unloaded", {"model": A, "reason": "idle"})
    metrics.observe("unloaded", {"model": A, "reason": "switch"})
    metrics.observe("unload_failed", {"model": A, "reason": "idle", "error": "x"})
    metrics.observe("memory_advisory", {"model": A})
    metrics.observe("server_unreachable", {"url": "u", "error": "e"})
    metrics.observe("config_invalid", {"error": "e"})
    metrics.observe("state_changed", {"from": "idle", "to": "loading", "model": A})
    types, samples = parse_exposition(metrics.render(snapshot()))
    assert sample(samples, "lmkeeperd_loads_total", kind="main", adopted="false") == 1
    assert sample(samples, "lmkeeperd_loads_total", kind="main", adopted="true") == 1
    assert sample(samples, "lmkeeperd_loads_total", kind="draft", adopted="false") == 1
    assert sample(samples, "lmkeeperd_unloads_total", reason="idle") == 1
    assert sample(samples, "lmkeeperd_unloads_total", reason="switch") == 1
    assert sample(samples, "lmkeeperd_unloads_total", reason="exit") == 0
    for kind in ("load", "unload", "server", "config"):
        assert sample(samples, "lmkeeperd_failures_total", kind=kind) == 1
    assert sample(samples, "lmkeeperd_memory_advisories_total") == 1
    # Adopted loads take no time: they would drag the histogram towards zero.
    assert sample(samples, "lmkeeperd_load_duration_seconds_count") == 2
    assert sample(samples, "lmkeeperd_load_duration_seconds_sum") == pytest.approx(3.9)
    assert sample(samples, "lmkeeperd_load_duration_seconds_bucket", le="1.0") == 1
    assert sample(samples, "lmkeeperd_load_duration_seconds_bucket", le="5.0") == 2
    assert types["lmkeeperd_load_duration_seconds"] == "histogram"


def test_gauges_come_from_the_snapshot() -> None:
    text = Metrics().render(snapshot(state="streaming", active_streams=2, server_reachable=None))
    _, samples = parse_exposition(text)
    assert sample(samples, "lmkeeperd_state", state="streaming") == 1
    assert sample(samples, "lmkeeperd_state", state="loaded") == 0
    assert sample(samples, "lmkeeperd_model_info", model=A) == 1
    assert sample(samples, "lmkeeperd_active_streams") == 2
    assert sample(samples, "lmkeeperd_server_reachable") == 0
    assert sample(samples, "lmkeeperd_start_time_seconds") == 1_700_000_000.5
    assert not any(name.startswith("lmkeeperd_proxy_") for name, _ in samples)


def test_no_model_means_no_model_sample() -> None:
    _, samples = parse_exposition(Metrics().render(snapshot(model=None, selected=None)))
    assert not any(name == "lmkeeperd_model_info" for name, _ in samples)


def test_label_values_are_escaped() -> None:
    odd = 'we"ird\\model\nname'
    _, samples = parse_exposition(Metrics().render(snapshot(model=odd)))
    assert sample(samples, "lmkeeperd_model_info", model='we\\"ird\\\\model\\nname') == 1


def test_proxy_figures() -> None:
    stats = ProxyStats()
    stats.request_started()
    stats.request_started()
    stats.request_ended("2xx")
    stats.streams_open = 1
    stats.upstream_errors = 3
    _, samples = parse_exposition(Metrics().render(snapshot(proxy=stats, proxy_switches=2)))
    assert sample(samples, "lmkeeperd_proxy_requests_total", outcome="2xx") == 1
    assert sample(samples, "lmkeeperd_proxy_requests_total", outcome="aborted") == 0
    assert sample(samples, "lmkeeperd_proxy_requests_in_flight") == 1
    assert sample(samples, "lmkeeperd_proxy_streams_open") == 1
    assert sample(samples, "lmkeeperd_proxy_upstream_errors_total") == 3
    assert sample(samples, "lmkeeperd_proxy_switches_total") == 2
    assert sample(samples, "lmkeeperd_proxy_last_request_timestamp_seconds") > 1.7e9


def test_the_parser_catches_what_scrapers_reject() -> None:
    bad = [
        "x 1",  # no newline at the end
        "x 1\n",  # no TYPE
        "# TYPE x counter\nx 1\n",  # counter without _total
        '# TYPE x gauge\nx{a="1" 1\n',
        "# TYPE x gauge\nx one\n",
        "# TYPE x gauge\n# TYPE x gauge\nx 1\n",
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse_exposition(text)


@pytest.mark.e2e
def test_the_proxy_serves_metrics_that_parse(
    daemon_factory: Callable[..., DaemonProc], emulator: Emulator
) -> None:
    d = daemon_factory(proxy={"listen": "127.0.0.1:0"})
    d.request({"op": "select", "model": A})
    d.wait_status(state="loaded", model=A)
    url = "http://" + d.status()["proxy"]["listen"]
    with httpx.Client(trust_env=False, timeout=30) as c:
        payload = {"model": A, "messages": [], "stream": False}
        assert c.post(url + "/v1/chat/completions", json=payload).status_code == 200
        r = c.get(url + "/lmkeeperd/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    _, samples = parse_exposition(r.text)
    assert sample(samples, "lmkeeperd_state", state="loaded") == 1
    assert sample(samples, "lmkeeperd_model_info", model=A) == 1
    assert sample(samples, "lmkeeperd_loads_total", kind="main", adopted="false") == 1
    assert sample(samples, "lmkeeperd_load_duration_seconds_count") == 1
    assert sample(samples, "lmkeeperd_server_reachable") == 1
    assert sample(samples, "lmkeeperd_proxy_requests_total", outcome="2xx") == 1
    assert sample(samples, "lmkeeperd_proxy_streams_open") == 0


@pytest.mark.e2e
def test_a_metrics_listener_of_its_own_when_the_proxy_is_off(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(metrics={"listen": "127.0.0.1:0"})
    st = d.status()
    assert st["proxy"] is None
    url = "http://" + st["metrics"]["listen"]
    with httpx.Client(trust_env=False, timeout=30) as c:
        r = c.get(url + "/lmkeeperd/metrics")
        assert c.get(url + "/v1/models").status_code == 404  # nothing is forwarded here
    _, samples = parse_exposition(r.text)
    assert sample(samples, "lmkeeperd_state", state="idle") == 1
    assert not any(name.startswith("lmkeeperd_proxy_") for name, _ in samples)
