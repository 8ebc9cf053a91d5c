"""Bearer-token auth as LM Studio does it, with its refusal bodies (lmstudio-real.md)."""

from __future__ import annotations

import hmac
from typing import Any

from lmkeeperd.emulator import payloads

# LM Studio's words: the first quoted whole from 0.4.18, the second known by its start.
MISSING_TOKEN_MESSAGE = "An LM Studio API token is required to make requests to this server."
WRONG_TOKEN_MESSAGE = "Malformed LM Studio API token provided."
# No source gives the status code; third-party clients assume 401, so both get it.
REFUSAL_STATUS = 401


def refused(header: str | None, token: str | None) -> bool | None:
    """None when the request may pass, else whether the token was missing (True) or wrong."""
    if token is None:
        return None
    scheme, _, supplied = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        return True
    # Constant time: the emulator must not teach a timing attack to anyone.
    if not hmac.compare_digest(supplied.strip().encode("utf-8"), token.encode("utf-8")):
        return False
    return None


def refusal_body(missing: bool, error_style: str) -> dict[str, Any]:
    """No token: LM Studio's invalid_api_key object. A wrong one: its message, our shape."""
    if missing:
        return {
            "error": {
                "type": "invalid_request",
                "code": "invalid_api_key",
                "message": MISSING_TOKEN_MESSAGE,
            }
        }
    return payloads.error_body(
        WRONG_TOKEN_MESSAGE, error_style, error_type="invalid_request", code=None
    )
