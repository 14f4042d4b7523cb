"""One HTTP delivery attempt: POST the original body to the target, classify the answer.

Headers: ``Content-Type: application/json``, ``X-Webhook-Request-Id`` (the event id),
``X-Webhook-Attempt`` (1-based), ``X-Webhook-Timestamp`` (ms, time of this attempt, as
WAHA sends it), and with the target's ``hmac_key`` ``X-Webhook-Hmac`` (hex HMAC-SHA512 of
the body) + ``X-Webhook-Hmac-Algorithm: sha512``. Redirects are not followed (a POST
redirect is ambiguous): a 3xx counts as a failure to retry.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from router.errors import UpstreamError, UpstreamTimeout
from router.transport import Transport
from router.webhooks.model import Entry


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool  # 2xx
    status: int | None  # None: no HTTP answer (connect error, timeout)
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None


def sign(key: str, body: bytes) -> str:
    """Hex HMAC-SHA512 of the raw body (WAHA's ``X-Webhook-Hmac``)."""
    return hmac.new(key.encode(), body, hashlib.sha512).hexdigest()


def headers_for(entry: Entry, attempt: int, hmac_key: str | None) -> dict[str, str]:
    h = {
        "Content-Type": "application/json",
        "User-Agent": "wa-router",
        "X-Webhook-Request-Id": entry.event_id,
        "X-Webhook-Attempt": str(attempt),
        "X-Webhook-Timestamp": str(int(time.time() * 1000)),
    }
    if hmac_key:
        h["X-Webhook-Hmac"] = sign(hmac_key, entry.body)
        h["X-Webhook-Hmac-Algorithm"] = "sha512"
    return h


async def post(
    http: Transport,
    url: str,
    entry: Entry,
    attempt: int,
    *,
    hmac_key: str | None,
    timeout: float,
) -> Result:
    """Never raises (but for cancellation): every failure is a ``Result``."""
    try:
        r = await http.request("POST", url, entry.body, headers_for(entry, attempt, hmac_key),
                               timeout=timeout)
    except UpstreamTimeout as e:
        if not e.reached_instance:
            return Result(False, None, "connect error: " + e.message)
        return Result(False, None, f"timeout after {timeout:g}s")
    except UpstreamError as e:
        kind = "connect error: " if not e.reached_instance else ""
        return Result(False, None, kind + e.message)
    except (OSError, ValueError) as e:
        return Result(False, None, f"{type(e).__name__}: {e}")
    if 200 <= r.status < 300:
        return Result(True, r.status)
    return Result(False, r.status, f"HTTP {r.status}")
