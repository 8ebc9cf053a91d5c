"""`LMStudioChannel` against the emulator's real websocket channel."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
import structlog

from lmkeeperd.emulator import Emulator
from lmkeeperd.errors import (
    AuthError,
    BadResponse,
    ChannelMissing,
    RpcMissing,
    RpcTimeout,
    ServerError,
    ServerUnreachable,
)
from lmkeeperd.lmstudio.channel import (
    LMStudioChannel,
    ProcessingState,
    channel_url,
    credentials_from_token,
)

TOKEN = "sk-lm-Abcd1234:ABCDEFGHIJ0123456789"
PASSKEY = "ABCDEFGHIJ0123456789"
LLM = "qwen/qwen2.5-0.5b-instruct"

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


def channel(emu: Emulator, **options: Any) -> LMStudioChannel:
    return LMStudioChannel(base_url=emu.url, **options)


# -- tokens and URLs -------------------------------------------------------------------


def test_token_is_split_as_the_sdks_split_it() -> None:
    credentials = credentials_from_token(f"  {TOKEN}\n")
    assert (credentials.identifier, credentials.passkey) == ("Abcd1234", PASSKEY)
    assert not credentials.guest
    assert PASSKEY not in repr(credentials)


def test_no_token_is_a_guest() -> None:
    one, two = credentials_from_token(None), credentials_from_token("  ")
    assert one.guest and one.identifier.startswith("guest:")
    assert one.identifier != two.identifier


@pytest.mark.parametrize(
    "token",
    ["secret", "sk-lm-Abcd1234", "sk-lm-Abcd123:ABCDEFGHIJ0123456789", TOKEN + "x", "Bearer x"],
)
def test_other_token_shapes_are_refused_naming_the_env_var(token: str) -> None:
    with pytest.raises(AuthError) as caught:
        credentials_from_token(token, "MY_TOKEN_VAR")
    assert "$MY_TOKEN_VAR" in str(caught.value)
    assert token not in str(caught.value)


def test_channel_url_from_the_rest_url() -> None:
    assert channel_url("http://127.0.0.1:1234") == "ws://127.0.0.1:1234/llm"
    assert channel_url("https://box:8443/", "/system") == "wss://box:8443/system"
    with pytest.raises(ValueError, match="ftp://x"):
        channel_url("ftp://x")


# -- calls -----------------------------------------------------------------------------


def test_list_loaded_and_processing_state(emulator: Emulator) -> None:
    emulator.load_behind(LLM)

    async def main() -> None:
        async with channel(emulator) as ch:
            (info,) = await ch.list_loaded()
            assert (info.identifier, info.model_key, info.type) == (LLM, LLM, "llm")
            assert info.last_used_ms is None and info.ttl_ms is None
            by_reference = await ch.processing_state(reference=info.instance_reference)
            by_identifier = await ch.processing_state(identifier=LLM)
            assert by_reference == by_identifier == ProcessingState("idle", 0)
            assert await ch.processing_state(identifier="nothing-like-it") is None

    run(main())


def test_a_direct_generation_is_seen_busy_then_idle_with_a_newer_last_used(
    emulator: Emulator,
) -> None:
    emulator.load_behind(LLM)
    # A stream held open for ~1.5 s by the emulator's stream controls.
    emulator.set_stream(interval=0.1, chunks=15)

    def emulated(status: str) -> Callable[[], bool]:
        return lambda: emulator.processing_state(LLM).status == status

    async def main() -> None:
        async with channel(emulator) as ch, httpx.AsyncClient(timeout=30) as http:
            (before,) = await ch.list_loaded()
            assert before.last_used_ms is None
            started_ms = time.time() * 1000
            body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stream": True}

            async def stream() -> None:
                url = emulator.url + "/v1/chat/completions"
                async with http.stream("POST", url, json=body) as answer:
                    async for _ in answer.aiter_lines():
                        pass

            task = asyncio.create_task(stream())
            await asyncio.to_thread(emulator.wait_until, emulated("generating"), 10)
            state = await ch.processing_state(identifier=LLM)
            assert state == ProcessingState("generating", 1) and state.busy
            await task
            await asyncio.to_thread(emulator.wait_until, emulated("idle"), 10)
            assert await ch.processing_state(identifier=LLM) == ProcessingState("idle", 0)
            (after,) = await ch.list_loaded()
            assert after.last_used_ms is not None and after.last_used_ms >= started_ms - 1
            assert after.instance_reference == before.instance_reference

    run(main())


def test_unknown_status_counts_as_busy() -> None:
    assert ProcessingState("somethingNew", 0).busy
    assert ProcessingState("idle", 1).busy
    assert not ProcessingState("idle", 0).busy
    with pytest.raises(BadResponse):
        ProcessingState.from_wire({"status": 3})


# -- auth ------------------------------------------------------------------------------


def test_auth_with_a_token(emulator: Emulator) -> None:
    emulator.set_token(TOKEN)

    async def main() -> None:
        async with channel(emulator, token=TOKEN) as ch:
            assert await ch.list_loaded() == []

    run(main())


@pytest.mark.parametrize("token", [None, "sk-lm-Abcd1234:ZZZZZZZZZZ0123456789"])
def test_auth_refused(emulator: Emulator, token: str | None) -> None:
    emulator.set_token(TOKEN)
    with pytest.raises(AuthError) as caught:
        run(channel(emulator, token=token).connect())
    message = str(caught.value)
    assert "Failed to validate client" in message
    assert "$LM_API_TOKEN" in message
    assert PASSKEY not in message and "ZZZZZZZZZZ" not in message


def test_auth_refused_switch(emulator: Emulator) -> None:
    emulator.refuse_channel_auth(True)
    with pytest.raises(AuthError):
        run(channel(emulator).connect())


def test_the_token_never_reaches_errors_or_logs(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-lm-Wxyz9876:QQQQQQQQQQ9999999999"
    emulator.set_token(TOKEN)
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    async def main() -> None:
        for token in (wrong, TOKEN):
            ch = channel(emulator, token=token)
            errors.append(repr(ch))
            try:
                async with ch:
                    await ch.call("noSuchEndpoint")
            except ServerError as exc:
                errors.append(str(exc))

    with structlog.testing.capture_logs() as logs:
        run(main())
    text = "\n".join([*errors, caplog.text, repr(logs)])
    assert any("Failed to validate client" in e for e in errors)
    assert any("does not know noSuchEndpoint" in e for e in errors)
    for secret in (PASSKEY, "QQQQQQQQQQ9999999999", TOKEN, wrong):
        assert secret not in text


# -- fault switches and failures -------------------------------------------------------


def test_channel_off_is_channel_missing(emulator: Emulator) -> None:
    emulator.set_channel(False)
    with pytest.raises(ChannelMissing) as caught:
        run(channel(emulator).connect())
    assert "Unexpected endpoint or method" in str(caught.value)
    assert caught.value.status_code == 200


def test_rpc_missing_fails_when_the_warning_arrives(emulator: Emulator) -> None:
    emulator.load_behind(LLM)
    emulator.set_channel_rpc_missing(True)

    async def main() -> None:
        # A timeout far past the test's own: only the warning can end this call in time.
        async with channel(emulator, call_timeout=600) as ch:
            with pytest.raises(RpcMissing, match="getInstanceProcessingState"):
                await ch.processing_state(identifier=LLM)
            assert len(await ch.list_loaded()) == 1

    run(main())


def test_slow_replies_time_out_per_call(emulator: Emulator) -> None:
    emulator.set_channel_delay(1.0)

    async def main() -> None:
        async with channel(emulator) as ch:
            with pytest.raises(RpcTimeout, match="listLoaded"):
                await ch.call("listLoaded", timeout=0.1)
            assert await ch.call("listLoaded", timeout=30) == []

    run(main())


def test_frame_size_cap(emulator: Emulator) -> None:
    for key in emulator.state()["models"]:
        emulator.load_behind(key)

    async def main() -> None:
        async with channel(emulator, max_frame_bytes=512) as ch:
            with pytest.raises(BadResponse, match="512 bytes"):
                await ch.list_loaded()

    run(main())


def test_unreachable_and_dropped(emulator: Emulator) -> None:
    async def main() -> None:
        async with channel(emulator) as ch:
            emulator.go_down()
            with pytest.raises(ServerUnreachable):
                await ch.list_loaded()
        with pytest.raises(ServerUnreachable, match="not reachable"):
            await channel(emulator).connect()

    run(main())
