"""The phase of an exchange: one explicit state and its legal transitions. Pure.

An exchange (one request and its response) is in exactly one phase. The phases are
ordered: every phase from ``STREAMING`` on means the response has begun (the router can no
longer answer with its own error), and ``DONE``, ``TUNNEL`` and ``ABORTED`` are final.
The values are bits so that the exchange checks a transition with one ``&`` against
``ENTER_FROM[new]`` (the phases ``new`` may be entered from).

Whether the *request* has been read to its end is not part of the phase: that is the
client parser's position (``Exchange.request_done``), which runs independently of the
response, as the client and server states do in h11. An exchange can be ``DONE`` (an early
error answer) while its body is still coming, or ``QUEUED`` with its body fully read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Phase(enum.IntEnum):
    QUEUED = 1  # head read; waits for the exchanges before it on the connection
    ROUTING = 1 << 1  # its turn: checked, routed (synchronous)
    WAIT_BODY = 1 << 2  # the session is named in the body: reading it (bounded) first
    WEBHOOK = 1 << 3  # a webhook from an instance: reading its body
    STORING = 1 << 4  # the webhook was handed to the relay: waiting for it to be stored
    KEYED = 1 << 5  # a POST/PATCH with an Idempotency-Key: reading its body whole
    CLAIMING = 1 << 6  # ... then claiming the key (``idempotent``): forward, or answer
    # HOLDING, CONNECTING, FAN_OUT, BACKOFF: a task of the exchange runs (``waits``).
    HOLDING = 1 << 7  # the session is new, moving or on a down instance: waiting (bounded)
    CONNECTING = 1 << 8  # opening a connection to the instance
    FAN_OUT = 1 << 9  # asking every instance (a list of sessions, say)
    BACKOFF = 1 << 10  # the instance failed: waiting a little before sending it again
    SENT = 1 << 11  # on an upstream connection: the request went (or is going) out
    STREAMING = 1 << 12  # the response head went to the client: the body is being relayed
    DONE = 1 << 13  # answered completely (by the instance or by the router)
    TUNNEL = 1 << 14  # 101 Switching Protocols: the connection is a byte tunnel now
    ABORTED = 1 << 15  # ended without a complete answer: client gone, or response cut


FINAL = Phase.DONE | Phase.TUNNEL | Phase.ABORTED

# Where each phase may go. The router's own answer (an error, a local endpoint, a stored
# webhook) ends in DONE from any phase before STREAMING; the client going away ends any
# phase that is not final in ABORTED.
_ANSWERABLE = frozenset(Phase) - {Phase.STREAMING, Phase.DONE, Phase.TUNNEL, Phase.ABORTED}
_NEXT: dict[Phase, set[Phase]] = {
    Phase.QUEUED: {Phase.ROUTING},
    Phase.ROUTING: {
        Phase.WAIT_BODY, Phase.WEBHOOK, Phase.HOLDING, Phase.CONNECTING, Phase.FAN_OUT,
        Phase.SENT, Phase.KEYED,
    },
    Phase.KEYED: {Phase.CLAIMING},
    Phase.CLAIMING: {Phase.HOLDING, Phase.CONNECTING, Phase.SENT},
    Phase.WAIT_BODY: {Phase.HOLDING, Phase.CONNECTING, Phase.SENT},
    Phase.WEBHOOK: {Phase.STORING},
    Phase.STORING: set(),
    Phase.HOLDING: {Phase.CONNECTING, Phase.SENT},
    Phase.CONNECTING: {Phase.SENT, Phase.BACKOFF},
    Phase.FAN_OUT: set(),
    Phase.BACKOFF: {Phase.HOLDING, Phase.CONNECTING, Phase.SENT},
    # SENT -> CONNECTING: the keep-alive race (a pooled connection closed as it was reused).
    Phase.SENT: {Phase.STREAMING, Phase.CONNECTING, Phase.BACKOFF},
    Phase.STREAMING: {Phase.DONE, Phase.TUNNEL},
    Phase.DONE: set(),
    Phase.TUNNEL: set(),
    Phase.ABORTED: set(),
}
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    p: frozenset(
        nxt | ({Phase.DONE} if p in _ANSWERABLE else set()) | ({Phase.ABORTED} if not p & FINAL else set())
    )
    for p, nxt in _NEXT.items()
}


def _enter_from(new: Phase) -> int:
    mask = 0
    for old, nxt in TRANSITIONS.items():
        if new in nxt:
            mask |= old
    return mask


# ENTER_FROM[new]: the phases ``new`` may be entered from, as a bit mask.
ENTER_FROM: Mapping[Phase, int] = {p: _enter_from(p) for p in Phase}


class PhaseError(RuntimeError):
    """An exchange tried a transition its state machine does not have: a router bug."""

    def __init__(self, old: Phase, new: Phase) -> None:
        super().__init__(f"illegal exchange transition {old.name} -> {new.name}")
        self.old = old
        self.new = new


def advance(old: Phase, new: Phase) -> Phase:
    """``new`` if the exchange may go there from ``old``; else ``PhaseError``."""
    if not old & ENTER_FROM[new]:
        raise PhaseError(old, new)
    return new
