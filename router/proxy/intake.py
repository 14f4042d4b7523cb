"""Webhook intake on the proxy port: an instance POSTs an event, the router answers once
the relay has it (stored durably with Redis, queued in memory), then relays it.

Callbacks, no task: under load this path runs ~10k times a second, and a task plus a
future per request was a fifth of its cost. The checks of the event itself are pure
(``router.proxy.inbound``); this module drives one exchange through them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from router.config.model import WebhooksConfig
from router.errors import BodyTooLarge, MethodNotAllowed, RouterError, ShuttingDown
from router.outbox.routes import is_outbox
from router.proxy import outbox
from router.proxy.inbound import parse_webhook, session_status
from router.proxy.phase import Phase
from router.webhooks.model import InboundEvent

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange

log = logging.getLogger("wa_router.proxy")


def too_large(size: int | None, config: WebhooksConfig) -> BodyTooLarge | None:
    if size is not None and size > config.max_body:
        return BodyTooLarge(f"webhook body exceeds webhooks.max_body ({config.max_body} bytes)")
    return None


def start(ex: Exchange, *, outbox: bool = False) -> None:
    """The head of a webhook (or an ``/outbox`` request, also answered by the router) is
    in: check it, then read its body (``limits.max_body`` bounds both)."""
    if not outbox:
        if ex.method_str != "POST":
            ex.fail(MethodNotAllowed("webhooks are POSTed"))
            return
        err = too_large(ex.content_length, ex.router.config.webhooks)
        if err is not None:
            ex.fail(err, close=True)
            return
    if ex.read_whole(Phase.WEBHOOK):
        accept(ex)


def accept(ex: Exchange) -> None:
    """The whole body is in: parse and verify it, hand it to the relay (an ``/outbox``
    request: to the outbox)."""
    outbox_service = ex.conn.server.outbox
    if outbox_service is not None and is_outbox(ex.path):
        outbox.answer(ex, outbox_service)
        return
    router = ex.router
    relay = router.relay
    assert relay is not None
    ex.enter(Phase.STORING)
    try:
        event = parse_webhook(b"".join(ex.body_parts), ex.header_map, router.config.webhooks)
        ex.body_parts = []
        relay.accept_nowait((event,), lambda error: stored(ex, event, error))
    except RouterError as e:
        ex.fail(e)
    except Exception:
        log.exception("request %s failed", ex.request_id, extra={"request_id": ex.request_id})
        ex.fail(RouterError("internal error"))


def stored(ex: Exchange, event: InboundEvent, error: BaseException | None) -> None:
    """The relay's answer: stored durably (Redis) or queued (memory), or not."""
    if error is not None:
        if isinstance(error, RouterError):
            ex.fail(error)
        elif isinstance(error, asyncio.CancelledError):
            ex.fail(ShuttingDown("the router is stopping"))
        else:
            log.error("request %s: storing a webhook failed: %r", ex.request_id, error,
                      extra={"request_id": ex.request_id})
            ex.fail(RouterError("internal error"))
        return
    status = session_status(event)
    if status is not None and event.session is not None:
        ex.router.record_status(event.session, status)
    outbox_service = ex.conn.server.outbox
    if outbox_service is not None:  # acks and sends the outbox tracks
        outbox_service.dispatcher.tracker.observe(event.event, event.session, event.body)
    ex.respond_json(200, b'{"status":"accepted","id":' + json.dumps(event.id).encode() + b"}")
