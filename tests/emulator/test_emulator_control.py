"""The emulator's request log, its HTTP control API, and the module as a program.

Waits are on conditions with deadlines (`emu.wait_until`, `wait_for_request`,
thread joins with timeouts); no test sleeps to synchronise or asserts a
duration beyond a generous lower bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator_support import (
    CHAT,
    JOIN_SECONDS,
    LOAD,
    SMALL,
    chat_body,
    make_client,
)

from lmkeeperd.emulator import (
    Emulator,
    RequestRecord,
    catalog_to_json,
    default_catalog,
)

# -- request log -------------------------------------------------------------------------


def test_request_log_records_every_request_in_order(emu: Emulator, client: httpx.Client) -> None:
    before = time.monotonic()
    client.get("/api/v1/models")
    client.post(LOAD, json={"model": SMALL})
    client.post(LOAD, json={"model": "nobody/nothing"})
    client.get("/_emulator/loaded")
    records = emu.requests()
    assert [(r.method, r.path, r.status) for r in records] == [
        ("GET", "/api/v1/models", 200),
        ("POST", LOAD, 200),
        ("POST", LOAD, 404),
    ]
    assert records[0].body is None
    assert records[1].body == {"model": SMALL}
    assert all(isinstance(r, RequestRecord) and r.authorized for r in records)
    times = [r.t for r in records]
    assert before <= times[0] <= times[1] <= times[2]
    emu.clear_requests()
    assert emu.requests() == []


def test_request_log_is_bounded() -> None:
    with Emulator(request_log_limit=3) as emulator, make_client(emulator) as c:
        for n in range(5):
            c.get(f"/api/v1/models?n={n}")
        assert [r.path for r in emulator.requests()] == [f"/api/v1/models?n={n}" for n in (2, 3, 4)]


def test_quiet_by_default_verbose_on_request(capfd: pytest.CaptureFixture[str]) -> None:
    with Emulator() as quiet, make_client(quiet) as c:
        c.get("/api/v1/models")
    assert capfd.readouterr().err == ""
    with Emulator(verbose=True) as loud, make_client(loud) as c:
        c.get("/api/v1/models")
    assert "GET /api/v1/models" in capfd.readouterr().err


# -- HTTP control API --------------------------------------------------------------------


def test_control_endpoints_steer_the_emulator(emu: Emulator, client: httpx.Client) -> None:
    def post(name: str, body: Any) -> dict[str, Any]:
        response = client.post(f"/_emulator/{name}", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    post("load_delay", {"seconds": 0.5, "model": SMALL})
    post("fail_next_loads", {"n": 2, "message": "boom", "status": 503})
    post("hang_unloads", {"on": True})
    post("jit", {"on": True})
    post("v0_only", {"on": True})
    post("stream", {"interval": 0.25, "chunks": 3})
    post("error_style", {"style": "string"})
    post("token", {"token": "abc"})
    post("auto_evict", {"on": False})
    post("legacy_load_answer", {"on": True})
    post("advance_clock", {"seconds": 90})
    state = emu.state()
    assert (state["auto_evict"], state["legacy_load_answer"]) == (False, True)
    assert state["clock_offset"] == 90
    assert state["model_load_delays"] == {SMALL: 0.5}
    assert state["fail_next_loads"] == 2
    assert state["hang_unloads"] is True
    assert state["jit"] is True
    assert state["v0_only"] is True
    assert (state["stream_interval"], state["stream_chunks"]) == (0.25, 3)
    assert state["error_style"] == "string"
    assert state["token_set"] is True
    post("token", {"token": None})
    post("load_delay", {"seconds": 0})
    assert emu.state()["token_set"] is False
    assert emu.state()["model_load_delays"] == {}

    instance_id = post("load_behind", {"key": SMALL, "config": {"context_length": 2048}})
    assert instance_id == {"instance_id": SMALL}
    assert client.get("/_emulator/loaded").json() == {"loaded": {SMALL: [SMALL]}}
    instances = client.get("/_emulator/instances").json()["instances"]
    assert instances[SMALL] == {
        "model": SMALL,
        "jit": False,
        "ttl": None,
        "idle_seconds": instances[SMALL]["idle_seconds"],
        "in_use": 0,
    }
    post("unload_behind", {"instance_id": SMALL})
    assert emu.loaded() == {}
    assert client.get("/_emulator/state").json()["loaded"] == {}


def test_control_requests_endpoint_serves_the_log(emu: Emulator, client: httpx.Client) -> None:
    client.get("/api/v0/models")
    middle = time.monotonic()
    client.post(LOAD, json={"model": SMALL})
    records = client.get("/_emulator/requests").json()["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/api/v0/models", 200),
        ("POST", LOAD, 200),
    ]
    assert set(records[1]) == {"t", "method", "path", "body", "status", "authorized", "t_done"}
    assert records[1]["body"] == {"model": SMALL}
    later = client.get("/_emulator/requests", params={"since": middle}).json()["requests"]
    assert [r["path"] for r in later] == [LOAD]
    assert client.post("/_emulator/clear_requests").status_code == 200
    assert client.get("/_emulator/requests").json() == {"requests": []}


@pytest.mark.parametrize(
    ("method", "name", "body", "status"),
    [
        ("POST", "load_delay", {"seconds": -1}, 400),
        ("POST", "load_delay", {"seconds": 1, "model": "nobody/nothing"}, 404),
        ("POST", "fail_next_loads", {"n": "two"}, 400),
        ("POST", "fail_next_loads", {"n": 1, "status": 200}, 400),
        ("POST", "hang_unloads", {}, 400),
        ("POST", "load_behind", {"key": "nobody/nothing"}, 404),
        ("POST", "unload_behind", {"instance_id": "ghost"}, 404),
        ("POST", "stream", {"chunks": 0}, 400),
        ("POST", "error_style", {"style": "xml"}, 400),
        ("POST", "token", {}, 400),
        ("POST", "jit", [True], 400),
        ("POST", "nothing", {}, 404),
        ("GET", "load_delay", None, 404),
    ],
)
def test_bad_control_requests_are_refused(
    emu: Emulator, client: httpx.Client, method: str, name: str, body: Any, status: int
) -> None:
    response = client.request(method, f"/_emulator/{name}", json=body)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert emu.requests() == []


# -- the module as a program -------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lmkeeperd.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_cli_prints_its_url_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    token = "cli-s3cret"
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(catalog_to_json(default_catalog()[:3])))
    args = ("--port", "0", "--token-env", "EMU_TOKEN", "--catalog", str(catalog), "--jit")
    with run_cli(*args, env={"EMU_TOKEN": token}) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {"Authorization": f"Bearer {token}"}
        with make_client(url, headers=headers) as c:
            assert len(c.get("/api/v1/models").json()["models"]) == 3
            assert c.post(CHAT, json=chat_body(SMALL)).status_code == 200
            assert c.get("/api/v1/models", headers={"Authorization": ""}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=JOIN_SECONDS)
    assert proc.returncode == 0
    assert err == ""
    assert token not in out + url


def test_cli_refuses_a_missing_token_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EMU_ABSENT"}
    with subprocess.Popen(
        [sys.executable, "-m", "lmkeeperd.emulator", "--port", "0", "--token-env", "EMU_ABSENT"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        out, err = proc.communicate(timeout=JOIN_SECONDS)
    assert proc.returncode == 2
    assert "EMU_ABSENT" in err
    assert out == ""
