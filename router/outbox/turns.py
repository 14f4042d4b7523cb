"""One session's turn in the outbox, decided without I/O.

The dispatcher gives every session with queued messages a turn when its time comes (round
robin by due time: one message per turn, then the pacing gap, so one session's long
campaign never delays another). ``decide`` says what the turn does with the session's head
message; ``settle`` says what an attempt's verdict changes. The async layer
(``router.outbox.dispatcher``) only reads, sends and writes what these return.
"""

from __future__ import annotations

from dataclasses import dataclass

from router import backoff
from router.config.model import OutboxConfig
from router.outbox.model import Message, State
from router.outbox.outcome import Verdict
from router.outbox.pacing import gap, next_allowed

# A session that cannot send is looked at again after a quarter of the time it has waited,
# between these bounds: a failover's wait resumes within a second or two, while thousands of
# sessions waiting for hours (never placed, paused) cost little.
WAIT_RECHECK = 1.0
WAIT_RECHECK_MAX = 15.0


def recheck(waited: float) -> float:
    return min(WAIT_RECHECK_MAX, max(WAIT_RECHECK, waited / 4))


@dataclass(frozen=True, slots=True)
class Send:
    instance: str


@dataclass(frozen=True, slots=True)
class Wait:
    """The session cannot send now (moving, down, not WORKING): no attempt is counted."""

    until: float
    why: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The head message ends without a send: expired, or waited past ``max_wait``."""

    state: State
    why: str


@dataclass(frozen=True, slots=True)
class Later:
    """Nothing to do before ``at`` (pacing, a retry delay, a scheduled message)."""

    at: float


Turn = Send | Wait | Finish | Later


@dataclass(frozen=True, slots=True)
class SessionView:
    """What the router knows of the session right now."""

    instance: str | None  # where it can be sent now; None: unplaced, moving or down
    why_not: str = ""  # when ``instance`` is None
    paused: bool = False  # the session, or the head message's campaign
    cancelled: bool = False  # the head message's campaign


def decide(m: Message, session: SessionView, now: float, not_before: float,
           sent: list[float], config: OutboxConfig) -> Turn:
    """The head message's turn. ``not_before``/``sent``: the session's pacing state (the
    end of its last gap; its recent send times, ascending)."""
    if session.cancelled:
        return Finish(State.CANCELLED, "its campaign was cancelled")
    if m.expires and now >= m.expires:
        return Finish(State.EXPIRED, "expired before it could be sent")
    if session.paused:
        return Later(now + WAIT_RECHECK_MAX / 3)  # resuming also schedules it at once
    at = max(m.not_before, m.retry_at, next_allowed(now, not_before, sent, config.limits))
    if at > now:
        return Later(at)
    if session.instance is None:
        since = m.waiting_since if m.waiting_since is not None else now
        if now - since >= config.max_wait:
            return Finish(State.FAILED, f"waited {config.max_wait:g}s for the session: {session.why_not}")
        return Wait(now + recheck(now - since), session.why_not)
    return Send(session.instance)


@dataclass(frozen=True, slots=True)
class Settled:
    """What an attempt changes: the message's new state and when the session may go on."""

    state: State
    retry_at: float = 0.0  # RETRY: the message's next attempt
    next_turn: float = 0.0  # the session's next turn
    gap_until: float | None = None  # SENT: the pacing gap's end (the session's not_before)
    error: str | None = None


def settle(m: Message, verdict: Verdict, now: float, config: OutboxConfig,
           rand_gap: float, rand_jitter: float, error: str | None = None) -> Settled:
    """``m.attempts`` already counts this attempt. ``rand_*`` in [0, 1]."""
    if verdict is Verdict.SENT:
        until = now + gap(config.delay, rand_gap)
        return Settled(State.SENT, next_turn=until, gap_until=until)
    if verdict is Verdict.RETRY:
        r = config.retries
        at = now + backoff.delay(m.attempts, base=r.delay, cap=r.max_delay, policy=r.policy,
                                 jitter=r.jitter, rand=rand_jitter)
        return Settled(State.QUEUED, retry_at=at, next_turn=at, error=error)
    if verdict is Verdict.WAIT:
        # Not an attempt after all: the session was not ready there.
        return Settled(State.QUEUED, next_turn=now + WAIT_RECHECK, error=error)
    if verdict is Verdict.UNKNOWN:
        return Settled(State.UNKNOWN, next_turn=now, error=error or "no answer after it was sent")
    return Settled(State.FAILED, next_turn=now, error=error)
