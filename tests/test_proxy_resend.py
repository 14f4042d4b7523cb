"""Sending a request again after the instance failed it (pure: ``router.proxy.resend``).

One row per situation: what happened (connect refused, or the request was written; bytes
already relayed; a reused pooled connection) and what is at hand (method, body, retries,
time), and the one thing to do. The rule (README, "When an instance dies"): never send
again a request that may have reached the instance unless it is idempotent and its whole
body is still kept; a POST in flight when an instance dies gets 502.
"""

from __future__ import annotations

from typing import Any

import pytest

from router.proxy.resend import IDEMPOTENT, MAX_RETRIES, Resend, after_failure, backoff

pytestmark = pytest.mark.unit

FAIL, RECONNECT, REROUTE, FINISH, CUT = (
    Resend.FAIL, Resend.RECONNECT, Resend.REROUTE, Resend.FINISH, Resend.CUT
)

# A request fully read, nothing relayed yet, on a fresh connection, first try, time left.
BASE: dict[str, Any] = dict(
    reached=True, responded=False, eof_delimited=False, reused=False, retries=0, body_sent=0,
    body_complete=True, body_at_hand=True, method=b"GET", time_left=5.0,
)

CONNECT_REFUSED = {"reached": False}

# (what is different from BASE, what to do, why)
TABLE: list[tuple[dict[str, Any], Resend, str]] = [
    ({**CONNECT_REFUSED, "method": b"POST", "body_sent": 40}, REROUTE,
     "never reached the instance: a POST is safe to send again"),
    ({**CONNECT_REFUSED, "method": b"PATCH"}, REROUTE, "never reached: any method"),
    ({**CONNECT_REFUSED, "method": b"POST", "body_complete": False}, FAIL,
     "body still streaming from the client: it cannot be replayed"),
    ({**CONNECT_REFUSED, "method": b"POST", "body_at_hand": False}, FAIL,
     "body larger than the replay limit: it was not kept"),
    ({**CONNECT_REFUSED, "time_left": 0.0}, FAIL, "the hold deadline has passed"),
    ({**CONNECT_REFUSED, "time_left": -1.0}, FAIL, "the hold deadline has passed"),
    ({**CONNECT_REFUSED, "retries": MAX_RETRIES - 1}, REROUTE, "the last resend allowed"),
    ({**CONNECT_REFUSED, "retries": MAX_RETRIES}, FAIL, "out of resends"),
    ({"method": b"POST", "body_sent": 40}, FAIL,
     "a sendText that may have reached the instance: sending it twice sends the message twice"),
    ({"method": b"PATCH", "body_sent": 3}, FAIL, "PATCH is not idempotent"),
    ({"method": b"GET"}, REROUTE, "idempotent, no body"),
    ({"method": b"HEAD"}, REROUTE, "idempotent"),
    ({"method": b"OPTIONS"}, REROUTE, "idempotent"),
    ({"method": b"PUT", "body_sent": 10}, REROUTE, "idempotent, body kept"),
    ({"method": b"DELETE"}, REROUTE, "idempotent"),
    ({"method": b"PUT", "body_sent": 10, "body_at_hand": False}, FAIL,
     "idempotent but the body is gone"),
    ({"method": b"PUT", "body_sent": 10, "body_complete": False}, FAIL,
     "idempotent but the body is still coming"),
    ({"reused": True}, RECONNECT,
     "the keep-alive race: the instance closed a pooled connection as it was reused"),
    ({"reused": True, "method": b"POST"}, RECONNECT,
     "the keep-alive race with an empty body: nothing was processed, nothing lost"),
    ({"reused": True, "method": b"POST", "body_sent": 40}, FAIL,
     "a body went out on the reused connection: it may have been processed"),
    ({"reused": True, "retries": 1}, REROUTE, "the race is resent once only: then the rule"),
    ({"reused": True, "retries": 1, "method": b"POST"}, FAIL, "... and a POST gets 502"),
    ({**CONNECT_REFUSED, "reused": True}, REROUTE, "a connect error is no keep-alive race"),
    ({"timed_out": True}, FAIL,
     "no answer in upstream_timeout from an instance still up: a slow answer, 504"),
    ({"timed_out": True, "reached": False, "method": b"POST", "body_sent": 40}, REROUTE,
     "a connect timeout (the instance healthy again by then): it never got the request"),
    ({"timed_out": True, "instance_healthy": False}, REROUTE,
     "no answer, and the instance is down meanwhile (a partition): a GET is held and resent"),
    ({"timed_out": True, "instance_healthy": False, "reused": True}, REROUTE,
     "a timeout is no keep-alive race: routed afresh, not reconnected at once"),
    ({"timed_out": True, "instance_healthy": False, "method": b"POST", "body_sent": 40}, FAIL,
     "a sendText that got no answer may have been sent: 504, never twice"),
    ({"timed_out": True, "instance_healthy": False, "responded": True}, CUT,
     "response under way when it stalled: cut"),
    ({"timed_out": True, "responded": True, "eof_delimited": True}, CUT,
     "a close-delimited body that stalled is not complete: cut, not finished"),
    ({"responded": True, "eof_delimited": True}, FINISH,
     "the body was delimited by the close: the close is its end"),
    ({"responded": True}, CUT, "response under way: the client must see it truncated"),
    ({"responded": True, "method": b"GET", "reused": True}, CUT,
     "nothing is sent again once bytes went to the client, even a GET"),
]


@pytest.mark.parametrize(("changes", "expected", "why"), TABLE, ids=[row[2] for row in TABLE])
def test_after_failure(changes: dict[str, Any], expected: Resend, why: str) -> None:
    assert after_failure(**{**BASE, **changes}) is expected, why


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH",
                                    b"OPTIONS"])
@pytest.mark.parametrize("reached", [True, False])
def test_a_request_that_may_have_reached_is_resent_only_if_idempotent(
    method: bytes, reached: bool
) -> None:
    decision = after_failure(**{**BASE, "method": method, "reached": reached, "body_sent": 1})
    assert (decision is REROUTE) == (not reached or method in IDEMPOTENT)


@pytest.mark.parametrize(("retries", "seconds"),
                         [(0, 0.05), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (8, 1.0)])
def test_backoff(retries: int, seconds: float) -> None:
    assert backoff(retries) == pytest.approx(seconds)
