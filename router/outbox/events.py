"""Outbox changes as webhook events: ``outbox.message`` after every state change past
``queued``, ``outbox.campaign`` when a campaign finishes, pauses or is cancelled. They go
through the durable webhook relay, to every target whose ``events`` match."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from router.errors import RouterError
from router.outbox.model import Campaign, Message
from router.webhooks import WebhookRelay
from router.webhooks.model import InboundEvent

log = logging.getLogger("wa_router.outbox")


class OutboxEvents:
    def __init__(self, relay: WebhookRelay) -> None:
        self._relay = relay
        self.emitted = 0
        self.lost = 0

    def __repr__(self) -> str:
        return f"<OutboxEvents emitted={self.emitted} lost={self.lost}>"

    def message(self, m: Message) -> None:
        if not self._relay.wants("outbox.message"):
            return
        # The id names the change, so a receiver can drop a duplicate delivery (a sent
        # message's delivery changes too: each ack level is a change of its own).
        change = f"{m.id}:{m.state}:{m.attempts}"
        if m.delivery is not None:
            change += f":{m.delivery.get('ack')}"
        self._emit(change, m.session, "outbox.message", m.view())

    def campaign(self, c: Campaign, eta: float | None = None) -> None:
        self._emit(f"{c.id}:{c.state}", None, "outbox.campaign", c.view(eta))

    def _emit(self, event_id: str, session: str | None, kind: str, payload: dict[str, Any]) -> None:
        if not self._relay.wants(kind):
            return  # no target takes it: not even built
        body = json.dumps({"id": event_id, "event": kind, "session": session, "payload": payload},
                          separators=(",", ":")).encode()
        try:
            self._relay.accept_nowait([InboundEvent(event_id, session, kind, body, time.time())],
                                      self._stored)
        except RouterError as e:  # stopping
            self.lost += 1
            log.warning("outbox: event %s not queued: %s", kind, e.message)

    def _stored(self, error: BaseException | None) -> None:
        if error is None:
            self.emitted += 1
        else:
            self.lost += 1
            log.warning("outbox: an event could not be stored for delivery: %s", error)
