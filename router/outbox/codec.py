"""Messages and campaigns as stored in Redis.

A message is one hash value, ``<state digit><meta JSON>\\n<request body>``: the state first
so a script can compare-and-set it without decoding anything, the body last and byte for
byte (a script rewriting the meta keeps everything from the newline). The meta has one-letter
keys and leaves out every default (a queued WAHA send's meta is about 50 bytes): with a
million messages queued, every byte is a megabyte of Redis memory. The session and the
creation time are not stored: the message id names the session, and the sequence number is
the creation time in microseconds.
"""

from __future__ import annotations

import json
from typing import Any, Final

from router.outbox.model import Campaign, CampaignState, Message, Priority, Request, State, time_of

STATES: Final = tuple(State)
CODE: Final = {s: str(i) for i, s in enumerate(STATES)}  # queued "0", sending "1", ...
DEFAULT_TYPE: Final = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_meta(m: Message) -> bytes:
    """The value's head: state digit and meta (without the newline and the body)."""
    r = m.request
    doc: dict[str, Any] = {"p": r.path, "n": m.seq}
    if r.method != "POST":
        doc["m"] = r.method
    if r.query:
        doc["q"] = r.query
    if r.content_type != DEFAULT_TYPE:
        doc["t"] = r.content_type
    if r.request_id:
        doc["i"] = r.request_id
    if m.priority is Priority.HIGH:
        doc["h"] = 1
    for key, value in (("c", m.campaign), ("f", m.ref), ("b", m.not_before), ("x", m.expires),
                       ("a", m.attempts), ("y", m.retry_at), ("w", m.waiting_since),
                       ("I", m.instance), ("z", m.sent_at), ("R", m.response), ("e", m.error),
                       ("d", m.delivery), ("F", m.finished)):
        if value:
            doc[key] = value
    return (CODE[m.state] + _dumps(doc)).encode()


def encode(m: Message) -> bytes:
    return encode_meta(m) + b"\n" + m.request.body


def decode(message_id: str, session: str, raw: bytes) -> Message:
    head, _, body = raw.partition(b"\n")
    d: dict[str, Any] = json.loads(head[1:])
    seq = int(d.get("n", 0))
    request = Request(d.get("m", "POST"), d.get("p", ""), d.get("q", ""), body,
                      d.get("t", DEFAULT_TYPE), d.get("i", ""))
    return Message(
        message_id, session, request, created=round(time_of(seq), 6), seq=seq,
        priority=Priority.HIGH if d.get("h") else Priority.NORMAL, campaign=d.get("c"),
        ref=d.get("f"), not_before=float(d.get("b", 0.0)), expires=float(d.get("x", 0.0)),
        state=STATES[head[0] - 48], attempts=int(d.get("a", 0)),
        retry_at=float(d.get("y", 0.0)), waiting_since=d.get("w"), instance=d.get("I"),
        sent_at=d.get("z"), response=d.get("R"), error=d.get("e"), delivery=d.get("d"),
        finished=d.get("F"),
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
