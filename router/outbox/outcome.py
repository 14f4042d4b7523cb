"""What one send attempt's result means for the message (pure; tables in the tests).

A send either never reached the instance (connect refused, a timeout while connecting),
reached it and got an answer, or reached it and lost the answer. Only the first may be
repeated freely; a lost answer means it may have been sent, and it is never sent again
automatically (``unknown``): a customer would see it twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    SENT = "sent"  # 2xx
    RETRY = "retry"  # counted attempt, try again after the retry delay
    WAIT = "wait"  # the session cannot send now: no attempt counted, order kept
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What happened to one attempt. ``status`` None: no answer."""

    written: bool  # the request may have reached the instance
    status: int | None = None
    rate_limited: bool = False  # an answer naming rate-overlimit


def retryable(status: int) -> bool:
    """429 and every 5xx: the instance could not take it now."""
    return status == 429 or 500 <= status < 600


def judge(attempt: Attempt, attempts_made: int, max_attempts: int) -> Verdict:
    """The verdict for an attempt; ``attempts_made`` counts this one."""
    status = attempt.status
    if status is None:
        if attempt.written:
            return Verdict.UNKNOWN  # it may have been sent: never again by itself
        return _retry(attempts_made, max_attempts)
    if 200 <= status < 300:
        return Verdict.SENT
    if status in (404, 422):
        # 404: the instance lost the session (reconciliation restores it); 422: the session
        # is not WORKING there. Either way the queue waits, as the proxy's requests would.
        return Verdict.WAIT
    if retryable(status) or attempt.rate_limited:
        return _retry(attempts_made, max_attempts)
    return Verdict.FAILED  # other 4xx: the request itself is wrong


def _retry(attempts_made: int, max_attempts: int) -> Verdict:
    return Verdict.RETRY if attempts_made < max_attempts else Verdict.FAILED
