"""Helpers the emulator's REST tests share (tests/emulator/test_emulator_*.py)."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from lmkeeperd.emulator import Emulator

SMALL = "qwen/qwen3-4b-2507"
EIGHT_B = "meta-llama/llama-3.1-8b-instruct"
VISION = "google/gemma-3-12b"
EMBEDDER = "text-embedding-nomic-embed-text-v1.5"
LOAD = "/api/v1/models/load"
UNLOAD = "/api/v1/models/unload"
CHAT = "/v1/chat/completions"
JOIN_SECONDS = 10.0


def make_client(url: str | Emulator, **options: Any) -> httpx.Client:
    # Plain HTTP on loopback: verify=False only skips building a TLS context (~50 ms each).
    base_url = url.url if isinstance(url, Emulator) else url
    options = {"timeout": 10.0, **options}
    return httpx.Client(base_url=base_url, trust_env=False, verify=False, **options)


def models_by_key(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/models")
    assert response.status_code == 200
    return {m["key"]: m for m in response.json()["models"]}


def error_message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


def chat_body(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


class Background:
    """Runs one HTTP call on a thread; keeps its response or transport error."""

    def __init__(self, emulator: Emulator, method: str, path: str, body: Any = None) -> None:
        self.outcome: httpx.Response | httpx.TransportError | None = None
        self._thread = threading.Thread(
            target=self._run, args=(emulator.url, method, path, body), daemon=True
        )
        self._thread.start()

    def _run(self, url: str, method: str, path: str, body: Any) -> None:
        with make_client(url, timeout=30.0) as c:
            try:
                self.outcome = c.request(method, path, json=body)
            except httpx.TransportError as exc:
                self.outcome = exc

    def join(self) -> httpx.Response | httpx.TransportError | None:
        self._thread.join(JOIN_SECONDS)
        assert not self._thread.is_alive(), "the request thread did not finish"
        return self.outcome
