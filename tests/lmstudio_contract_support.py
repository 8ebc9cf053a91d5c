"""The two servers LMStudioClient's contract tests run against (tests/lmstudio/test_client_*.py).

`MockBackend`: an in-process fake behind `httpx.MockTransport`, written from the
documented shapes and the answers recorded from real LM Studio releases in
lmstudio-real.md. `EmulatorBackend`: lmkeeperd's emulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol, TypeVar

import httpx

from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import (
    ServerError,
)
from lmkeeperd.lmstudio.client import LMStudioClient

QWEN = "qwen/qwen3-4b-2507"
EMBEDDER = "text-embedding-nomic-embed-text-v1.5"
TOKEN_ENV = "LM_API_TOKEN"
TOKEN = "sk-lm-Zq8VxT3pW9rK2mN7:Yb4Hc6Jd1Lf5Gs0A"


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def failure(call: Awaitable[object]) -> ServerError:
    """The ServerError `call` raises. Holds no token in its locals (traceback tests render them)."""
    try:
        await call
    except ServerError as error:
        return error
    raise AssertionError("expected a ServerError")


# ---------------------------------------------------------------- the fake behind MockTransport

# Recorded answers (lmstudio-real.md): no token (0.4.18, quoted in opencode-lmstudio #41).
MISSING_TOKEN_BODY = {
    "error": {
        "type": "invalid_request",
        "code": "invalid_api_key",
        "message": "An LM Studio API token is required to make requests to this server.",
    }
}


def unexpected(request: httpx.Request) -> httpx.Response:
    """LM Studio's answer to an endpoint or method it does not serve: HTTP 200 (#618, #1323)."""
    message = f"Unexpected endpoint or method. ({request.method} {request.url.path})"
    return httpx.Response(200, json={"error": message})


def _model_entry(key: str, instances: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    if key == EMBEDDER:
        return {
            "type": "embedding",
            "publisher": "nomic-ai",
            "key": key,
            "display_name": "Nomic Embed Text v1.5",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
            "size_bytes": 84106624,
            "params_string": None,
            "loaded_instances": [{"id": i, "config": c} for i, c in instances],
            "max_context_length": 2048,
            "format": "gguf",
        }
    return {
        "type": "llm",
        "publisher": "qwen",
        "key": key,
        "display_name": "Qwen3 4B 2507",
        "architecture": "qwen3",
        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
        "size_bytes": 2497280256,
        "params_string": "4B",
        "loaded_instances": [{"id": i, "config": c} for i, c in instances],
        "max_context_length": 262144,
        "format": "gguf",
        "capabilities": {"vision": False, "trained_for_tool_use": True},
    }


class FakeLMStudio:
    """lmstudio-api.md as a MockTransport handler, plus raw answers for malformed-body tests."""

    url = "http://lmstudio.test:1234"

    def __init__(self) -> None:
        self.catalog = [QWEN, EMBEDDER]
        self.instances: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.token: str | None = None
        self.v0_only = False
        self.old_style = "real"  # "real": 200 "Unexpected endpoint"; "404": a bare 404
        self.down = False
        self.error_style = "object"
        self.failures: list[tuple[int, str]] = []
        self.raw: dict[str, httpx.Response] = {}  # path -> canned answer
        self.seen: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            raise httpx.ConnectError("All connection attempts failed", request=request) from refused
        self.seen.append(request)
        path = request.url.path
        if self.token is not None:
            scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not supplied:
                return httpx.Response(401, json=MISSING_TOKEN_BODY)
            if supplied != self.token:
                return self.error(401, "Malformed LM Studio API token provided.")
        if path in self.raw:
            return self.raw[path]
        if self.v0_only and path.startswith("/api/v1/"):
            if self.old_style == "404":
                return httpx.Response(404, text="Not Found")
            return unexpected(request)
        body: dict[str, Any] = json.loads(request.content) if request.content else {}
        if (request.method, path) == ("GET", "/api/v1/models"):
            models = [_model_entry(k, self.instances.get(k, [])) for k in self.catalog]
            return httpx.Response(200, json={"models": models})
        if (request.method, path) == ("GET", "/api/v0/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        if (request.method, path) == ("POST", "/api/v1/models/load"):
            return self.load(body)
        if (request.method, path) == ("POST", "/api/v1/models/unload"):
            return self.unload(body["instance_id"])
        return unexpected(request)

    def load(self, body: dict[str, Any]) -> httpx.Response:
        key = body.pop("model")
        if key not in self.catalog:
            return self.error(404, f"model '{key}' not found")
        if self.failures:
            status, message = self.failures.pop(0)
            return self.error(status, message)
        taken = {i for i, _ in self.instances.get(key, [])}
        instance_id, n = key, 1
        while instance_id in taken:
            n += 1
            instance_id = f"{key}:{n}"
        self.instances.setdefault(key, []).append((instance_id, body))
        answer = {"type": "llm", "instance_id": instance_id, "load_time_seconds": 1.5}
        return httpx.Response(200, json={**answer, "status": "loaded"})

    def unload(self, instance_id: str) -> httpx.Response:
        for instances in self.instances.values():
            for entry in instances:
                if entry[0] == instance_id:
                    instances.remove(entry)
                    return httpx.Response(200, json={"instance_id": instance_id})
        return self.error(404, f"no loaded instance with id '{instance_id}'")

    def error(self, status: int, message: str) -> httpx.Response:
        if self.error_style == "string":
            return httpx.Response(status, json={"error": message})
        return httpx.Response(status, json={"error": {"message": message, "type": "x"}})


# ---------------------------------------------------------------- backends


class Backend(Protocol):
    url: str

    def client(
        self, *, request_timeout: float = 5.0, load_timeout: float = 30.0
    ) -> LMStudioClient: ...

    def set_token(self, token: str | None) -> None: ...
    def set_v0_only(self, on: bool) -> None: ...
    def set_error_style(self, style: str) -> None: ...
    def fail_next_load(self, status: int, message: str) -> None: ...
    def go_down(self) -> None: ...
    def loaded(self) -> dict[str, list[str]]: ...


class MockBackend:
    def __init__(self, fake: FakeLMStudio) -> None:
        self.fake = fake
        self.url = fake.url

    def client(self, *, request_timeout: float = 5.0, load_timeout: float = 30.0) -> LMStudioClient:
        return LMStudioClient.from_settings(
            base_url=self.url,
            token_env=TOKEN_ENV,
            request_timeout=request_timeout,
            load_timeout=load_timeout,
            transport=self.fake.transport(),
        )

    def set_token(self, token: str | None) -> None:
        self.fake.token = token

    def set_v0_only(self, on: bool) -> None:
        self.fake.v0_only = on

    def set_error_style(self, style: str) -> None:
        self.fake.error_style = style

    def fail_next_load(self, status: int, message: str) -> None:
        self.fake.failures.append((status, message))

    def go_down(self) -> None:
        self.fake.down = True

    def loaded(self) -> dict[str, list[str]]:
        return {k: [i for i, _ in v] for k, v in self.fake.instances.items() if v}


class EmulatorBackend:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.url = emu.url

    def client(self, *, request_timeout: float = 5.0, load_timeout: float = 30.0) -> LMStudioClient:
        return LMStudioClient.from_settings(
            base_url=self.url,
            token_env=TOKEN_ENV,
            request_timeout=request_timeout,
            load_timeout=load_timeout,
        )

    def set_token(self, token: str | None) -> None:
        self.emu.set_token(token)

    def set_v0_only(self, on: bool) -> None:
        self.emu.set_v0_only(on)

    def set_error_style(self, style: str) -> None:
        self.emu.set_error_style(style)

    def fail_next_load(self, status: int, message: str) -> None:
        self.emu.fail_next_loads(1, message, status=status)

    def go_down(self) -> None:
        self.emu.go_down()

    def loaded(self) -> dict[str, list[str]]:
        return self.emu.loaded()


def _fake_client(fake: FakeLMStudio, **settings: float) -> LMStudioClient:
    return LMStudioClient.from_settings(
        base_url=fake.url,
        token_env=TOKEN_ENV,
        request_timeout=settings.get("request_timeout", 5.0),
        load_timeout=settings.get("load_timeout", 30.0),
        transport=fake.transport(),
    )


def _fail_with(fake: FakeLMStudio, operation: str) -> ServerError:
    async def scenario() -> ServerError:
        async with _fake_client(fake) as client:
            if operation == "list":
                return await failure(client.list_models())
            return await failure(client.load(QWEN))

    return run(scenario())
