"""What the proxy reads off a request before forwarding it: whether it asks a model for
something (and so pins it), the model its body names, whether an answer is an event stream,
and how much of a body is read whole (server.py's docstring, 3.-5.).
"""

from __future__ import annotations

import json

from lmkeeperd.proxy.http1 import Response

# A body up to this size is read whole before forwarding (server.py's docstring, 5.)
REPLAY_BODY_LIMIT = 1024 * 1024
# With select_on_request the model's name must be read: images in a vision
# request make bodies of several MB.
SELECT_BODY_LIMIT = 32 * 1024 * 1024

_API_ROOTS = (b"/v1", b"/api/v0", b"/api/v1")
_INFERENCE = frozenset(
    {b"/chat/completions", b"/completions", b"/embeddings", b"/responses", b"/messages", b"/chat"}
)


def is_inference(method: bytes, path: bytes) -> bool:
    """Whether a request asks a model for something (and so pins it while in flight)."""
    if method != b"POST":
        return False
    path = path.rstrip(b"/")
    return any(path.startswith(root) and path[len(root) :] in _INFERENCE for root in _API_ROOTS)


def model_of(body: bytes) -> str | None:
    """The `model` a JSON request body names, trimmed; None when it names none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model.strip():
        return None
    return model.strip()


def is_event_stream(response: Response) -> bool:
    content_type = response.header(b"content-type") or b""
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"
