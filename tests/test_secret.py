"""lmkeeperd/secret.py: the API token never shows itself, and is read from the environment."""

from __future__ import annotations

import asyncio
import io
import logging
import traceback
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from lmkeeperd import logs
from lmkeeperd.emulator import Emulator
from lmkeeperd.lmstudio.client import LMStudioClient
from lmkeeperd.proxy import ProxySettings, Token
from lmkeeperd.secret import Secret

VALUE = "sk-lm-Zq8VxT3pW9rK2mN7:Yb4Hc6Jd1Lf5Gs0A"


def shown_ways(secret: Secret) -> list[str]:
    return [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:>60}",
        f"{secret:s}",
        "%s %r" % (secret, secret),  # noqa: UP031 - the old formatting is a way too
        "{} {!r}".format(secret, secret),  # noqa: UP032
        repr([secret]),
        repr({"token": secret}),
        repr(ProxySettings(upstream="http://x", inject_token=True, token=secret)),
    ]


def test_the_value_never_shows_in_repr_str_or_format() -> None:
    secret = Secret(VALUE)
    for text in shown_ways(secret):
        assert VALUE not in text
        assert "Zq8V" not in text
    assert repr(secret) == "Secret('***')"
    assert str(secret) == f"{secret:>60}" == "***"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_value_never_reaches_a_rendered_log_line(fmt: str, restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup(level="debug", fmt=fmt, stream=out)
    secret = Secret(VALUE)
    log = structlog.get_logger()
    log.info("token_event", token=secret, nested={"token": secret}, listed=[secret])
    try:
        raise RuntimeError("failed")
    except RuntimeError:
        log.error("token_failure", token=secret, exc_info=True)
    rendered = out.getvalue()
    assert "token_event" in rendered and "token_failure" in rendered
    assert "***" in rendered
    assert VALUE not in rendered


def test_the_value_never_reaches_captured_events() -> None:
    secret = Secret(VALUE)
    with capture_logs() as events:
        structlog.get_logger().warning("token_event", token=secret)
    assert events and events[0]["token"] is secret
    assert VALUE not in repr(events) and VALUE not in str(events)


def test_the_value_never_shows_in_a_traceback_with_locals() -> None:
    def send(token: Secret) -> None:
        header = token  # noqa: F841 - a local that a traceback with locals shows
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError) as caught:
        send(Secret(VALUE))
    with_locals = traceback.TracebackException.from_exception(caught.value, capture_locals=True)
    texts = ["".join(with_locals.format())]
    rich_console = pytest.importorskip("rich.console")
    rich_traceback = pytest.importorskip("rich.traceback")
    console = rich_console.Console(record=True, width=200, file=io.StringIO())
    console.print(
        rich_traceback.Traceback.from_exception(
            caught.type, caught.value, caught.tb, show_locals=True
        )
    )
    texts.append(console.export_text())
    assert all("header" in text for text in texts)  # the locals are there, masked
    for text in texts:
        assert VALUE not in text


def test_the_value_comes_out_only_where_it_is_sent() -> None:
    secret = Secret(VALUE)
    assert secret.reveal() == VALUE
    assert secret.bearer() == "Bearer " + VALUE
    assert secret.scrub(f"server said: bad token {VALUE}!") == "server said: bad token ***!"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("tok-123", "tok-123"),
        ("  tok-123\n", "tok-123"),  # as `export X=$(cat file)` or a pasted line leaves it
        ("tok with spaces", "tok with spaces"),
        ("", None),
        (" \n\t", None),
        ("tok\n123", None),  # a header cannot carry it: as good as no token
        ("tök-123", None),
        ("tok\x7f", None),
    ],
)
def test_from_env(raw: str, expected: str | None) -> None:
    secret = Secret.from_env("LM_API_TOKEN", {"LM_API_TOKEN": raw})
    assert (secret.reveal() if secret else None) == expected


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMK_TEST_TOKEN", raising=False)
    assert Secret.from_env("LMK_TEST_TOKEN") is None
    monkeypatch.setenv("LMK_TEST_TOKEN", VALUE)
    secret = Secret.from_env("LMK_TEST_TOKEN")
    assert secret is not None and secret.reveal() == VALUE


def test_of() -> None:
    secret = Secret(VALUE)
    assert Secret.of(secret) is secret
    of_text = Secret.of(VALUE)
    assert of_text is not None and of_text.reveal() == VALUE
    assert Secret.of("") is None and Secret.of(None) is None


def test_the_proxy_and_the_client_hold_the_token_in_the_same_type() -> None:
    assert Token is Secret


def test_the_client_sends_the_token_from_the_environment_trimmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMK_TEST_TOKEN", "tok-123\n")  # a trailing newline, as `cat` leaves it

    async def listed(url: str) -> int:
        client = LMStudioClient.from_settings(
            base_url=url, token_env="LMK_TEST_TOKEN", request_timeout=5.0, load_timeout=5.0
        )
        async with client:
            assert "tok-123" not in repr(client)
            return len(await client.list_models())

    with Emulator(token="tok-123") as emu:
        assert asyncio.run(listed(emu.url)) > 0
