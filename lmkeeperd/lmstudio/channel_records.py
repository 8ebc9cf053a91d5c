"""Typed records of LM Studio's websocket channel: credentials, instances, states.

Only the fields lmkeeperd uses are typed; unknown extra fields are ignored and
optional ones may be missing (lmstudio-ws.md: "do not require optional fields").
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmkeeperd.errors import AuthError, BadResponse

TOKEN_PATTERN = re.compile(r"^sk-lm-([a-zA-Z0-9]{8}):([a-zA-Z0-9]{20})$")
_TOKEN_SHAPE = "sk-lm-<8 letters or digits>:<20 letters or digits>"
_SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class Credentials:
    """The auth frame's identifier and passkey (the passkey never shows in a repr)."""

    identifier: str
    passkey: str = field(repr=False)
    guest: bool = False

    def frame(self) -> dict[str, Any]:
        return {
            "authVersion": 1,
            "clientIdentifier": self.identifier,
            "clientPasskey": self.passkey,
        }


def credentials_from_token(token: str | None, token_env: str = "LM_API_TOKEN") -> Credentials:
    """Split an `sk-lm-<id>:<passkey>` API token as the SDKs do; no token = a guest.

    Raises AuthError naming `token_env` (never the token) for any other shape.
    """
    if token is None or not token.strip():
        # lmstudio-js' guest: a random identifier under "guest:", a random passkey.
        return Credentials("guest:" + secrets.token_urlsafe(12), secrets.token_urlsafe(24), True)
    match = TOKEN_PATTERN.match(token.strip())
    if match is None:
        raise AuthError(
            f"the API token in ${token_env} is not an LM Studio API token: the websocket "
            f"channel needs one shaped {_TOKEN_SHAPE} (LM Studio 0.4+, Developer > Settings)"
        )
    return Credentials(match.group(1), match.group(2))


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One loaded instance as `listLoaded` reports it (the fields lmkeeperd uses)."""

    identifier: str
    instance_reference: str
    model_key: str
    type: str
    ttl_ms: float | None = None
    last_used_ms: float | None = None  # unix ms; None = not used yet
    context_length: int | None = None
    device_identifier: str | None = None

    @classmethod
    def from_wire(cls, raw: Any) -> InstanceInfo:
        if not isinstance(raw, Mapping):
            raise BadResponse(f"a listLoaded entry is not an object: {_snippet(raw)}")
        for name in ("identifier", "instanceReference", "modelKey"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise BadResponse(f"a listLoaded entry has no string {name!r}: {_snippet(raw)}")
        return cls(
            identifier=raw["identifier"],
            instance_reference=raw["instanceReference"],
            model_key=raw["modelKey"],
            type=raw["type"] if isinstance(raw.get("type"), str) else "llm",
            ttl_ms=_number_or_none(raw.get("ttlMs")),
            last_used_ms=_number_or_none(raw.get("lastUsedTime")),
            context_length=_int_or_none(raw.get("contextLength")),
            device_identifier=_str_or_none(raw.get("deviceIdentifier")),
        )


@dataclass(frozen=True, slots=True)
class ProcessingState:
    """`getInstanceProcessingState`: what the instance does, and requests queued incl. it."""

    status: str  # "idle" | "processingPrompt" | "generating" | "computingEmbedding" | newer
    queued: int

    @property
    def busy(self) -> bool:
        # A status this code does not know yet counts as busy: never unload a model in use.
        return self.status != "idle" or self.queued > 0

    @classmethod
    def from_wire(cls, raw: Any) -> ProcessingState:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("status"), str):
            raise BadResponse(f"a processing state without a string status: {_snippet(raw)}")
        queued = raw.get("queued", 0)
        if isinstance(queued, bool) or not isinstance(queued, int | float):
            raise BadResponse(f"a processing state whose queued is not a number: {_snippet(raw)}")
        return cls(raw["status"], int(queued))


def _snippet(value: Any) -> str:
    return repr(value)[:_SNIPPET_CHARS]


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
