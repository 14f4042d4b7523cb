"""What to do when the instance fails a request: send it again, or not. Pure.

The rule (README, "When an instance dies"): a request that never reached an instance
(connect refused or timed out) is sent again; one that may have reached it is sent again
only if it is idempotent (GET/HEAD/PUT/DELETE/OPTIONS) and its whole body (up to
``REPLAY_LIMIT``) is still at hand. A POST (``sendText``) in flight when an instance dies
gets 502: it may have been sent, and sending it twice would send the message twice.
Once response bytes went to the client nothing is sent again: a body delimited by the
connection's close has simply ended, any other is cut so the client sees it truncated.
"""

from __future__ import annotations

import enum

from router.backoff import delay

MAX_RETRIES = 8
REPLAY_LIMIT = 1024 * 1024  # bodies up to this size are kept to be sent again after a failover
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})


class Resend(enum.Enum):
    FAIL = "fail"  # answer the error (502, 504)
    RECONNECT = "reconnect"  # the keep-alive race: a fresh connection to the same instance, now
    REROUTE = "reroute"  # back off, route afresh (the session may have moved), send again
    FINISH = "finish"  # the response was delimited by the close: it is complete
    CUT = "cut"  # the response was under way: abort the client connection (truncated)


def after_failure(
    *,
    reached: bool,
    responded: bool,
    eof_delimited: bool,
    reused: bool,
    retries: int,
    body_sent: int,
    body_complete: bool,
    body_at_hand: bool,
    method: bytes,
    time_left: float,
    timed_out: bool = False,
    instance_healthy: bool = True,
) -> Resend:
    """The decision after the connection to the instance failed.

    reached: the request may have reached the instance (False: connect refused or timed
    out); responded: response bytes already went to the client; eof_delimited: that
    response's body ends with the connection; reused: the connection had served an earlier
    request (pooled); retries: times this request was already sent again; body_sent: body
    bytes read from the client so far; body_complete: the client sent its whole body;
    body_at_hand: all of it is still kept; time_left: until the hold deadline (seconds);
    timed_out: no answer in time (a connect timeout is ``reached`` False); instance_healthy:
    the health checks still see the instance up (a timeout then is a slow answer)."""
    if responded:  # (a stalled close-delimited body is cut: the stall is not its end)
        return Resend.FINISH if eof_delimited and not timed_out else Resend.CUT
    if timed_out and reached and instance_healthy:
        # A slow answer from an instance that is up: the session is still there, and
        # sending the request there again only doubles the wait.
        return Resend.FAIL
    if reached and reused and not retries and body_sent == 0 and not timed_out:
        # A pooled connection the instance closed just as it was reused: no answer, no
        # body, nothing lost.
        return Resend.RECONNECT
    if (
        retries < MAX_RETRIES
        and body_complete
        and body_at_hand
        and (not reached or method in IDEMPOTENT)
        and time_left > 0
    ):
        return Resend.REROUTE
    return Resend.FAIL


def backoff(retries: int) -> float:
    """Seconds to wait before the ``retries``-th resend: gives the health checks a moment
    (or an event) to catch up: 50 ms doubling to 1 s (``router.backoff``)."""
    return delay(retries + 1, base=0.05, cap=1.0)
