"""`[memory] budget` and a remote server in the memory verdicts (daemon/memory_advisor.py,
daemon/memory_verdict.py; L25): an absolute budget replaces the fraction; a remote server
without one gets "unknown", never a verdict from this machine's memory."""

from __future__ import annotations

from lmkeeperd.config import parse_config
from lmkeeperd.daemon.memory_advisor import MemoryCheck
from lmkeeperd.daemon.memory_verdict import verdicts
from lmkeeperd.lmstudio.models import ModelInfo
from lmkeeperd.memory import MemorySnapshot, StaticProbe

GB = 10**9
PROBE = StaticProbe(MemorySnapshot(total_bytes=32 * GB, available_bytes=30 * GB))
BIG = ModelInfo(key="big/model", size_bytes=20 * GB)


def test_an_absolute_budget_replaces_the_fraction() -> None:
    fraction = MemoryCheck(parse_config("[memory]\nbudget_fraction = 0.8\n"), PROBE)
    absolute = MemoryCheck(parse_config('[memory]\nbudget = "10GB"\n'), PROBE)
    assert fraction.status()["budget_gb"] == 25.6
    assert absolute.status()["budget_gb"] == 10.0
    assert verdicts(fraction, [BIG], 0.8)["big/model"]["verdict"] == "fits"
    assert verdicts(absolute, [BIG], 0.8)["big/model"]["verdict"] == "may not fit"


def test_a_remote_server_without_a_budget_gets_unknown() -> None:
    remote = MemoryCheck(parse_config('[server]\nurl = "http://10.0.0.7:1234"\n'), PROBE)
    row = verdicts(remote, [BIG], 0.8)["big/model"]
    assert row == {
        "verdict": "unknown",
        "why": "unknown: the server is remote; set [memory] budget",
    }
    assert remote.advise(BIG) is None  # no advisory from this machine's memory either


def test_a_remote_server_with_a_budget_gets_verdicts() -> None:
    config = parse_config('[server]\nurl = "http://10.0.0.7:1234"\n[memory]\nbudget = "24GB"\n')
    remote = MemoryCheck(config, PROBE)
    assert verdicts(remote, [BIG], 0.8)["big/model"]["verdict"] == "fits"


def test_estimate_uses_the_configured_budget() -> None:
    from lmkeeperd.cli import estimate

    config = parse_config('[memory]\nbudget = "10GB"\n[control]\nsocket = "/tmp/lk-none.sock"\n')
    result = estimate.report(config, [BIG], "big/model", None)
    assert result["budget"]["budget_gb"] == 10.0 and result["budget"]["configured"] is True
    assert result["fits"] is False
    assert "[memory] budget" in estimate.render(result)
