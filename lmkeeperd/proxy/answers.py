"""The proxy's own answers: errors in the OpenAI shape, the metrics endpoint, the 404s, and
the 503 for a connection over the cap. Everything else comes from LM Studio (forward.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus

from lmkeeperd.proxy.classify import REPLAY_BODY_LIMIT
from lmkeeperd.proxy.http1 import Request
from lmkeeperd.proxy.wire import ClientSide

LOCAL_PREFIX = b"/lmkeeperd/"
METRICS_PATH = b"/lmkeeperd/metrics"
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json; charset=utf-8"


def error_body(message: str, kind: str, code: str) -> bytes:
    """An error in the shape OpenAI-compatible clients (and LM Studio) use."""
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_OVER_CAP_BODY = error_body(
    "lmkeeperd's proxy has too many connections under way; try again shortly",
    "server_error",
    "too_many_connections",
)
# Sent to a connection over the cap without reading its request, then closed.
OVER_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    % (len(_OVER_CAP_BODY), _OVER_CAP_BODY)
)


async def send_error(
    client: ClientSide, request: Request, status: int, message: str, kind: str, code: str
) -> bool:
    """Answer with an error of our own; whether the connection can carry another."""
    keep = request.keep_alive and client.body.done
    body = error_body(message, kind, code)
    head_only = request.method == b"HEAD"
    await client.respond(
        status, reason_phrase(status), body, JSON_CONTENT_TYPE, close=not keep, head_only=head_only
    )
    return keep


async def local_error(
    client: ClientSide, request: Request, status: int, message: str, code: str
) -> bool:
    """`send_error` for a request not forwarded: its body is read first, up to the limit."""
    await client.read_body_upto(REPLAY_BODY_LIMIT)
    return await send_error(client, request, status, message, "invalid_request", code)


async def answer_locally(
    client: ClientSide, request: Request, path: bytes, metrics: Callable[[], str]
) -> bool:
    """`GET /lmkeeperd/metrics`, or a 404 naming what is served here."""
    if path == METRICS_PATH and request.method == b"GET":
        _, complete = await client.read_body_upto(REPLAY_BODY_LIMIT)
        keep = request.keep_alive and complete
        text = metrics().encode()
        await client.respond(200, b"OK", text, METRICS_CONTENT_TYPE, close=not keep)
        return keep
    what = "lmkeeperd serves only GET /lmkeeperd/metrics"
    if path.startswith(LOCAL_PREFIX):
        what += " under /lmkeeperd/"
    else:
        what += " on this listener (the proxy is [proxy] listen)"
    return await local_error(client, request, 404, what, "not_found")
