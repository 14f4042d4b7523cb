"""The outbox on the proxy port: ``/outbox/...`` requests are read whole, like webhooks,
then answered by the outbox service (``router.outbox.service``) in a task of the exchange.
Client keys apply as on every proxied path (checked before this)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from router.errors import BadRequest
from router.outbox.routes import route
from router.proxy import waits
from router.proxy.access import client_key
from router.proxy.phase import Phase

if TYPE_CHECKING:
    from router.outbox.service import OutboxService
    from router.proxy.exchange import Exchange


def answer(ex: Exchange, outbox: OutboxService) -> None:
    """The whole body is in: answer from a task (the store may take a round trip)."""
    waits.spawn(ex, Phase.STORING, _serve(ex, outbox))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError as e:
        raise BadRequest(f"the body must be JSON: {e}") from None


async def _serve(ex: Exchange, outbox: OutboxService) -> None:
    method, path, headers = ex.method_str, ex.path, ex.header_map
    body = b"".join(ex.body_parts)
    ex.body_parts = []
    r = route(method, path)
    status, result = 200, None
    if r.action == "enqueue":
        key = client_key(headers, ex.query)
        # Idempotency keys are scoped per client: a digest stands for the key itself.
        scope = hashlib.sha256(key.encode()).hexdigest()[:16] if key else ""
        status, result = await outbox.enqueue(method, r.target, ex.query, headers, body,
                                              client=scope)
    elif r.action == "create_campaign":
        status, result = 202, await outbox.create_campaign(_json(body), headers)
    elif r.action == "add_to_campaign":
        status, result = 202, await outbox.add_to_campaign(r.target, _json(body), headers)
    elif r.action == "campaign":
        result = await outbox.campaign(r.target)
    elif r.action == "campaign_action":
        result = await outbox.set_campaign_state(r.target, r.verb)
    elif r.action == "message":
        result = await outbox.message(r.target)
    elif r.action == "cancel":
        result = await outbox.cancel(r.target)
    elif r.action == "retry":
        result = await outbox.retry(r.target)
    else:
        result = await outbox.session(r.target)
    ex.respond_json(status, json.dumps(result, separators=(",", ":")).encode())
