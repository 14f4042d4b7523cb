"""Webhooks posted by instances to the router: validate, verify, describe. Pure: no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping

from router.config.model import WebhooksConfig
from router.errors import BadRequest, Unauthorized
from router.proxy.headers import valid_request_id
from router.webhooks.model import InboundEvent

MAX_FIELD = 256  # ids, sessions and event names longer than this are not trusted as such


def verify_signature(body: bytes, headers: Mapping[str, str], config: WebhooksConfig) -> None:
    """WAHA signs the raw body: ``X-Webhook-Hmac`` = hex HMAC-SHA512 with the shared key."""
    key = config.inbound_hmac_key
    if not key:
        return
    given = headers.get("x-webhook-hmac", "").strip().lower()
    algorithm = headers.get("x-webhook-hmac-algorithm", "sha512").strip().lower()
    if algorithm != "sha512":
        raise Unauthorized("unsupported X-Webhook-Hmac-Algorithm (sha512 expected)")
    expected = hmac.new(key.value.encode(), body, hashlib.sha512).hexdigest()
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-Webhook-Hmac signature")


def _short_str(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_FIELD else None


def parse_webhook(body: bytes, headers: Mapping[str, str], config: WebhooksConfig) -> InboundEvent:
    """The event an instance posted, or a ``RouterError`` saying what is wrong with it."""
    verify_signature(body, headers, config)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadRequest("webhook body is not valid JSON") from e
    if not isinstance(data, dict):
        raise BadRequest("webhook body must be a JSON object")
    header_id = headers.get("x-webhook-request-id", "")
    event_id = (
        _short_str(data.get("id"))
        or (header_id if valid_request_id(header_id.encode("latin-1", "replace")) else None)
        or "rtr_" + uuid.uuid4().hex
    )
    # WAHA names the session "session"; Evolution API names it "instance".
    session = _short_str(data.get("session")) or _short_str(data.get("instance"))
    event = _short_str(data.get("event")) or "unknown"
    return InboundEvent(id=event_id, session=session, event=event, body=body, received_at=time.time())


def session_status(event: InboundEvent) -> str | None:
    """The new status carried by a ``session.status`` event (WAHA), if any."""
    if event.event != "session.status" or event.session is None:
        return None
    try:
        payload = json.loads(event.body).get("payload")
    except (ValueError, AttributeError):
        return None
    status = payload.get("status") if isinstance(payload, dict) else None
    return status if isinstance(status, str) and len(status) <= 32 else None
