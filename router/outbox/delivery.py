"""What the instance says about messages the outbox sent (pure): its message id in a send's
answer, ``message.ack`` levels, and the key that matches a ``message.any`` to an ``unknown``
message (the same session, chat and text).

WAHA's ack levels (``message.ack``): -1 error, 0 pending, 1 server, 2 device, 3 read,
4 played; a message's ``delivery`` keeps the highest seen (an error whenever one comes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

ACKS: Final = {-1: "error", 0: "pending", 1: "server", 2: "device", 3: "read", 4: "played"}
LEVELS: Final = {name: level for level, name in ACKS.items()}


def wa_id(answer: Any) -> str | None:
    """The message id in an instance's answer to a send (WAHA: ``id`` as a string, or
    ``id._serialized``; NOWEB-style ``key.id``)."""
    if not isinstance(answer, dict):
        return None
    found = answer.get("id")
    if isinstance(found, dict):
        found = found.get("_serialized") or found.get("id")
    if found is None and isinstance(answer.get("key"), dict):
        found = answer["key"].get("id")
    return found if isinstance(found, str) and 0 < len(found) <= 256 else None


def match_key(chat: object, text: object) -> str | None:
    """What a sent message and its ``message.any`` share: the chat and the text."""
    if not isinstance(chat, str) or not isinstance(text, str) or not chat:
        return None
    return hashlib.sha256(f"{chat}\n{text}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


def request_key(body: bytes) -> str | None:
    """``match_key`` of a queued send (a WAHA ``sendText`` body: ``chatId`` and ``text``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return match_key(doc.get("chatId"), doc.get("text")) if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class Ack:
    session: str
    wa_id: str
    level: int


@dataclass(frozen=True, slots=True)
class Seen:
    """A ``message.any`` the session sent itself (``fromMe``)."""

    session: str
    wa_id: str | None
    key: str
    at: float | None


def parse(event: str, session: str | None, body: bytes) -> Ack | Seen | None:
    """A webhook the outbox cares about, or None."""
    if session is None or event not in ("message.ack", "message.any"):
        return None
    try:
        payload = json.loads(body).get("payload")
    except (ValueError, AttributeError):
        return None
    if not isinstance(payload, dict):
        return None
    found = payload.get("id")
    if isinstance(found, dict):
        found = found.get("_serialized")
    mid = found if isinstance(found, str) and 0 < len(found) <= 256 else None
    if event == "message.ack":
        level = payload.get("ack")
        if mid is None or not isinstance(level, int) or level not in ACKS:
            return None
        return Ack(session, mid, level)
    if payload.get("fromMe") is not True:
        return None
    key = match_key(payload.get("to"), payload.get("body"))
    if key is None:
        return None
    ts = payload.get("timestamp")
    return Seen(session, mid, key, float(ts) if isinstance(ts, (int, float)) else None)


def better(delivery: dict[str, Any] | None, level: int) -> bool:
    """Whether ack ``level`` says more than what ``delivery`` holds."""
    if delivery is None:
        return True
    if level == -1:
        return delivery.get("ack") != "error"
    return level > LEVELS.get(str(delivery.get("ack")), -2)
