"""Who may use the proxy: its Host and Origin checks.

Why: a web page in the user's browser can send requests to a loopback port
(cross-site requests), and with DNS rebinding it can even read the answers:
its own host name resolves to 127.0.0.1, so the browser treats the proxy as
the page's own origin. Both carry tell-tale headers. A cross-site request
carries the page's `Origin`; a rebound one carries the page's host name in
`Host` (and in `Origin`, on anything but a GET or HEAD).

The rules (docs/proxy.md, "Who can reach it"):

- A foreign `Origin` is refused always: without `inject_token` the origins of
  loopback pages (`http://localhost:3000`, any port) still pass, so local web
  UIs keep working; with `inject_token` only the proxy's own origin passes.
- With `inject_token`, `Host` must name the proxy by a loopback name:
  `127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT` or the listen address as
  configured. Without it, `Host` is not checked: the proxy then gives no one
  anything LM Studio's own port does not give them (LM Studio checks no Host
  either), and forward-proxy clients and other machines (with a non-loopback
  `listen`) name the proxy as they please.

Refusals never quote more than a short, printable part of the header.
"""

from __future__ import annotations

import ipaddress
import re

from lmkeeperd.proxy.http1 import Request

_ORIGIN = re.compile(rb"(?i)(https?)://(\[[0-9a-f:.]+\]|[^\s/:@\[\]]+)(?::([0-9]{1,5}))?")


def own_hosts(listen_host: str, port: int) -> frozenset[bytes]:
    """The Host values that name the proxy listening on `listen_host`:`port`."""
    configured = f"[{listen_host}]" if ":" in listen_host else listen_host
    names = ("127.0.0.1", "localhost", "[::1]", configured)
    return frozenset(f"{name}:{port}".lower().encode() for name in names)


def _loopback(host: bytes) -> bool:
    name = host.strip(b"[]").decode("ascii", "replace").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _shown(value: bytes) -> str:
    text = value[:80].decode("ascii", "replace")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _values(request: Request, name: bytes) -> list[bytes]:
    return [v for low, (_, v) in zip(request.names, request.headers, strict=True) if low == name]


def refusal(request: Request, hosts: frozenset[bytes], *, inject_token: bool) -> str | None:
    """Why `request` must get a 403, or None when it may pass."""
    for origin in _values(request, b"origin"):
        value = origin.strip().lower()
        if inject_token:
            allowed = value.startswith(b"http://") and value[len(b"http://") :] in hosts
        else:
            match = _ORIGIN.fullmatch(value)
            allowed = match is not None and _loopback(match[2])
        if not allowed:
            rule = (
                "the proxy's own loopback origin"
                if inject_token
                else "pages served from this machine (loopback origins)"
            )
            return (
                f"Origin {_shown(origin)!r} is refused: the proxy answers cross-site requests "
                f"only from {rule}; requests without an Origin header (SDKs, curl) pass"
            )
    if inject_token:
        values = _values(request, b"host")
        if len(values) != 1 or values[0].strip().lower() not in hosts:
            shown = "no Host header" if not values else f"Host {_shown(values[0])!r}"
            if len(values) > 1:
                shown = "several Host headers"
            names = ", ".join(sorted(h.decode() for h in hosts))
            return (
                f"{shown} is refused: with [proxy] inject_token the proxy answers only "
                f"requests addressed to it as {names} (protection against DNS rebinding)"
            )
    return None
