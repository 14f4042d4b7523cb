"""Value types shared by the webhook relay's modules (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One webhook as an instance posted it, accepted by the receiver."""

    id: str  # the instance's event id (body "id" or X-Webhook-Request-Id), or generated
    session: str | None
    event: str  # e.g. "message", "session.status"
    body: bytes  # the original raw body, delivered unchanged
    received_at: float  # time.time()


@dataclass(slots=True, eq=False)
class Entry:
    """An event queued for one target; ``qid`` is its id in that target's queue (a stream
    entry id in Redis). ``attempts`` counts HTTP attempts made by this process (an entry
    reclaimed after a crash starts again from 0)."""

    qid: str
    event_id: str
    session: str | None
    event: str
    body: bytes
    received_at: float
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None

    def __repr__(self) -> str:  # the body is the customer's data: its size only
        return (f"<Entry {self.qid} {self.event} session={self.session!r} id={self.event_id} "
                f"{len(self.body)} bytes, attempts={self.attempts}, last={self.last_status or self.last_error}>")


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """What the dead list keeps about an entry that will not be retried any more."""

    target_key: str
    target_url: str
    event_id: str
    session: str | None
    event: str
    body: bytes
    received_at: float
    attempts: int
    last_status: int | None
    last_error: str | None
    dead_at: float

    def __repr__(self) -> str:  # the target's key, never its URL (it may hold a secret)
        return (f"<DeadRecord {self.event} session={self.session!r} id={self.event_id} "
                f"target={self.target_key} attempts={self.attempts} last={self.last_status or self.last_error}>")

    @classmethod
    def of(cls, key: str, url: str, entry: Entry, dead_at: float) -> DeadRecord:
        return cls(key, url, entry.event_id, entry.session, entry.event, entry.body,
                   entry.received_at, entry.attempts, entry.last_status, entry.last_error,
                   dead_at)

    def view(self, dead_id: str) -> dict[str, Any]:
        """The admin API's shape of a dead entry (``id`` is the dead-entry id for replay)."""
        return {
            "id": dead_id,
            "event_id": self.event_id,
            "target": self.target_url,
            "event": self.event,
            "session": self.session,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "received_at": self.received_at,
            "dead_at": self.dead_at,
            "body": self.body.decode("utf-8", "replace"),
        }


@dataclass(slots=True)
class Counters:
    """Plain ints the metrics collector reads; shared by every target's worker."""

    received: int = 0  # inbound events accepted (once per event, whatever the targets)
    delivered: int = 0  # 2xx answers (per target)
    retried: int = 0  # failed attempts that were scheduled for another try
    dead: int = 0  # entries written to the dead list
    duplicates: int = 0  # deliveries of an event id this process had already delivered
    replayed: int = 0  # dead entries put back for delivery
