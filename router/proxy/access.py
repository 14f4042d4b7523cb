"""Client keys on the proxy port (``listen.api_keys``): pure checks, no I/O.

A key is accepted from ``X-Api-Key`` (WAHA), ``apikey`` (Evolution API) or the
``x-api-key`` query parameter (WAHA's form for browsers and WebSockets). It is compared with
every configured key in constant time (all of them, so the time does not tell which key
came close), and it never reaches an instance: the header is dropped, the query parameter
removed from the target, and the instance gets its own ``api_key`` instead.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from router.config.model import Secret
from router.proxy.framing import RequestHead

QUERY_KEY = b"x-api-key"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def client_key(headers: Mapping[str, str], query: str) -> str | None:
    """The key the client sent, if any (header first, then the query)."""
    key = headers.get("x-api-key") or headers.get("apikey")
    if key:
        return key
    if "x-api-key" in query.lower():
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name.lower() == "x-api-key" and value:
                return value
    return None


def allowed(given: str | None, keys: Sequence[Secret]) -> bool:
    if given is None:
        return False
    raw = given.encode("utf-8", "surrogateescape")
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(raw, k.value.encode())
    return ok


def strip_query_key(target: bytes) -> bytes:
    """``target`` without its ``x-api-key`` query parameter(s), other bytes untouched."""
    q = target.find(b"?")
    if q < 0 or QUERY_KEY not in target[q:].lower():
        return target
    kept = [p for p in target[q + 1 :].split(b"&") if p.split(b"=", 1)[0].lower() != QUERY_KEY]
    return target[:q] + (b"?" + b"&".join(kept) if kept else b"")


def admit(head: RequestHead, keys: Sequence[Secret], webhooks_path: str) -> bool:
    """Does the request carry one of ``keys``? Then the key is taken off it (never
    forwarded). Webhooks from instances (checked by ``inbound_hmac_key``) and the open
    paths need none."""
    if head.path == webhooks_path or head.path in OPEN_PATHS:
        return True
    if not allowed(client_key(head.header_map, head.query), keys):
        return False
    head.client_key_line = b""  # the router's key: never forwarded
    head.target = strip_query_key(head.target)
    return True
