"""Messages and campaigns as stored in Redis: a message's fields as compact JSON, its
request body apart (bytes, delivered byte for byte), a campaign as a hash."""

from __future__ import annotations

import json
from typing import Any

from router.outbox.model import Campaign, CampaignState, Message, Priority, Request, State

_KEYS = ("session", "method", "path", "query", "content_type", "request_id", "created", "seq",
         "priority", "campaign", "ref", "not_before", "expires", "state", "attempts", "retry_at",
         "waiting_since", "instance", "sent_at", "response", "error", "delivery", "finished")


def encode(m: Message) -> bytes:
    r = m.request
    values = (m.session, r.method, r.path, r.query, r.content_type, r.request_id, m.created, m.seq,
              str(m.priority), m.campaign, m.ref, m.not_before, m.expires, str(m.state),
              m.attempts, m.retry_at, m.waiting_since, m.instance, m.sent_at, m.response,
              m.error, m.delivery, m.finished)
    # Only what differs from the defaults is written: most fields are empty most of the time.
    doc = {k: v for k, v in zip(_KEYS, values, strict=True) if v not in (None, "", 0, 0.0)}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(message_id: str, raw: bytes, body: bytes) -> Message:
    d: dict[str, Any] = json.loads(raw)
    request = Request(d.get("method", "POST"), d.get("path", ""), d.get("query", ""), body,
                      d.get("content_type", ""), d.get("request_id", ""))
    return Message(
        message_id, d["session"], request, created=float(d.get("created", 0.0)),
        seq=int(d.get("seq", 0)), priority=Priority(d.get("priority", "normal")),
        campaign=d.get("campaign"), ref=d.get("ref"), not_before=float(d.get("not_before", 0.0)),
        expires=float(d.get("expires", 0.0)), state=State(d.get("state", "queued")),
        attempts=int(d.get("attempts", 0)), retry_at=float(d.get("retry_at", 0.0)),
        waiting_since=d.get("waiting_since"), instance=d.get("instance"),
        sent_at=d.get("sent_at"), response=d.get("response"), error=d.get("error"),
        delivery=d.get("delivery"), finished=d.get("finished"),
    )


def campaign_fields(c: Campaign) -> dict[Any, Any]:
    return {"name": c.name, "state": str(c.state), "created": repr(c.created),
            "finished": "" if c.finished is None else repr(c.finished)}


def decode_campaign(campaign_id: str, h: dict[bytes, bytes]) -> Campaign:
    def text(key: str) -> str:
        return h.get(key.encode(), b"").decode()

    counts = {str(s): int(h.get(f"n:{s}".encode(), b"0")) for s in State}
    finished = text("finished")
    return Campaign(campaign_id, text("name"), created=float(text("created") or 0),
                    state=CampaignState(text("state") or "running"),
                    total=int(h.get(b"total", b"0")), counts=counts,
                    finished=float(finished) if finished else None)
