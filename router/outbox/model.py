"""The outbox's values: messages, campaigns, their states (no I/O)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any

from router.ids import ulid


def new_id(prefix: str) -> str:
    """``msg_`` + a ULID: time-ordered, unique across routers."""
    return prefix + ulid()


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def campaign_id(number: int) -> str:
    """``cmp_`` + the campaign's number (the store counts them) + 3 random characters, in
    base 36: short, because every queued message of the campaign carries it (a million
    messages: ~20 MB less than a ULID), and not guessable from the one before."""
    digits = []
    while True:
        number, d = divmod(number, 36)
        digits.append(_BASE36[d])
        if not number:
            break
    tail = "".join(_BASE36[b % 36] for b in os.urandom(3))
    return "cmp_" + "".join(reversed(digits)) + tail


# Sequence numbers count microseconds from here: below the priority rank (1e15) until 2055.
SEQ_EPOCH = 1_700_000_000.0
RANK = 1e15  # queue score = priority rank * RANK + the message's due sequence


def seq_at(t: float) -> int:
    """Wall time ``t`` as a sequence number (microseconds since SEQ_EPOCH)."""
    return int((t - SEQ_EPOCH) * 1_000_000)


def time_of(seq: float) -> float:
    return SEQ_EPOCH + seq / 1_000_000


def message_id(session: str) -> str:
    """``msg_<ULID>.<session>``: the session is in the id, so a store finds the message's
    queue (and its Redis hash slot) from the id alone."""
    return f"{new_id('msg_')}.{session}"


def session_of(message_id: str) -> str | None:
    """The session a message id names, or None for a malformed id."""
    if not message_id.startswith("msg_") or len(message_id) < 32 or message_id[30] != ".":
        return None
    return message_id[31:]


def local_id(message_id: str) -> str:
    """The ULID of ``msg_<ULID>.<session>``: unique within its session's keys."""
    return message_id[4:30]


def full_id(local: str, session: str) -> str:
    """``local_id``'s inverse."""
    return f"msg_{local}.{session}"


class State(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


FINAL = frozenset({State.SENT, State.FAILED, State.UNKNOWN, State.CANCELLED, State.EXPIRED})

# Every legal change of state; anything else is a bug (``check`` raises).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SENDING, State.CANCELLED, State.EXPIRED, State.FAILED}),
    # Back to queued: a retry after a failure that provably sent nothing.
    State.SENDING: frozenset({State.SENT, State.FAILED, State.UNKNOWN, State.QUEUED}),
    State.FAILED: frozenset({State.QUEUED}),  # an explicit retry by the client
    State.UNKNOWN: frozenset({State.QUEUED, State.SENT}),  # explicit retry; reconciled
    State.SENT: frozenset(),
    State.CANCELLED: frozenset(),
    State.EXPIRED: frozenset(),
}


class IllegalTransition(Exception):
    pass


def check(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old} -> {new}")


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"

    @property
    def rank(self) -> int:
        """Queue order: lower first."""
        return 0 if self is Priority.HIGH else 1


@dataclass(frozen=True, slots=True)
class Request:
    """The send as the client made it, replayed to the session's instance later."""

    method: str
    path: str  # without /outbox
    query: str
    body: bytes
    content_type: str
    request_id: str


@dataclass(slots=True)
class Message:
    id: str
    session: str
    request: Request
    created: float  # wall clock (seconds)
    seq: int  # enqueue order (with priority: the session's queue order)
    priority: Priority = Priority.NORMAL
    campaign: str | None = None
    ref: str | None = None
    not_before: float = 0.0  # wall clock; 0: at once
    expires: float = 0.0  # wall clock; 0: never
    state: State = State.QUEUED
    attempts: int = 0
    retry_at: float = 0.0  # wall clock: after a failed attempt
    waiting_since: float | None = None  # the session could not send since then
    instance: str | None = None
    sent_at: float | None = None
    response: dict[str, Any] | None = None  # {"status", "body"}
    error: str | None = None
    delivery: dict[str, Any] | None = None
    finished: float | None = None
    wa_id: str | None = None  # the instance's id of the sent message (its acks name it)

    @property
    def order(self) -> tuple[int, int]:
        """Queue order: high priority first, then by when the message is due (enqueue
        order, or its ``not_before``: a message scheduled for tomorrow does not hold back
        today's)."""
        return (self.priority.rank, max(self.seq, seq_at(self.not_before)))

    @property
    def score(self) -> float:
        rank, due = self.order
        return rank * RANK + due

    def view(self) -> dict[str, Any]:
        """``GET /outbox/messages/{id}``."""
        return {
            "id": self.id, "session": self.session, "campaign": self.campaign, "ref": self.ref,
            "state": str(self.state), "priority": str(self.priority), "attempts": self.attempts,
            "instance": self.instance, "created": self.created, "sent_at": self.sent_at,
            "response": self.response, "error": self.error, "delivery": self.delivery,
        }

    def __repr__(self) -> str:  # never the body: the customer's data
        return (f"<Message {self.id} {self.state} session={self.session!r} "
                f"{self.request.method} {self.request.path} attempts={self.attempts}>")


class CampaignState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = "finished"


@dataclass(slots=True)
class Campaign:
    id: str
    name: str
    created: float
    state: CampaignState = CampaignState.RUNNING
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {str(s): 0 for s in State})
    finished: float | None = None

    def view(self, eta_seconds: float | None) -> dict[str, Any]:
        counts = dict(self.counts)
        if self.state is CampaignState.CANCELLED:
            # Its queued messages are never sent; the store marks them as their turns come.
            counts["cancelled"] += counts["queued"]
            counts["queued"] = 0
        return {"id": self.id, "name": self.name, "state": str(self.state), "total": self.total,
                "counts": counts, "created": self.created, "finished": self.finished,
                "eta_seconds": eta_seconds}
