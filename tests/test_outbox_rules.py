"""The outbox's pure rules: pacing and limits, attempt verdicts, state transitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config.model import DelayRange, SendLimits
from router.outbox import codec
from router.outbox.model import (
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    Message,
    Priority,
    Request,
    State,
    check,
    message_id,
    session_of,
    time_of,
)
from router.outbox.outcome import Attempt, Verdict, judge
from router.outbox.pacing import gap, next_allowed, trim, windows
from router.outbox.signals import StallWatch, after_attempt, status_pause

NO_LIMITS = SendLimits(0, 0, 0)


@pytest.mark.parametrize(
    ("now", "not_before", "sent", "limits", "expected"),
    [
        (100.0, 0.0, [], SendLimits(), 100.0),  # nothing sent: at once
        (100.0, 104.0, [98.0], NO_LIMITS, 104.0),  # the gap after the last send
        (100.0, 0.0, [50.0, 70.0, 90.0], SendLimits(3, 0, 0), 110.0),  # minute full: 50 leaves
        (100.0, 0.0, [50.0, 70.0, 90.0], SendLimits(4, 0, 0), 100.0),  # room left
        (100.0, 0.0, [30.0, 50.0], SendLimits(2, 0, 0), 100.0),  # 30 has left already
        # the hour is full although the minute is not: wait for the oldest of the hour
        (4000.0, 0.0, [1000.0, 2000.0, 3990.0], SendLimits(5, 3, 0), 4600.0),
        # waiting for one window (99 + 60) still leaves the hour full: then 41 + 3600
        (100.0, 0.0, [41.0, 99.0], SendLimits(1, 2, 0), 3641.0),
    ],
)
def test_next_allowed(now: float, not_before: float, sent: list[float], limits: SendLimits,
                      expected: float) -> None:
    assert next_allowed(now, not_before, sent, limits) == pytest.approx(expected, abs=0.002)


def test_windows_skip_zero_limits_and_trim_forgets_old_sends() -> None:
    assert [w.seconds for w in windows(SendLimits(20, 0, 2000))] == [60.0, 86400.0]
    sent = [1.0, 100.0, 3000.0, 3700.0]
    trim(sent, 3800.0, SendLimits(20, 300, 0))  # an hour back at most
    assert sent == [3000.0, 3700.0]
    sent = [1.0, 2.0]
    trim(sent, 10.0, NO_LIMITS)
    assert sent == []


def test_gap_is_within_the_range() -> None:
    d = DelayRange(2.0, 6.0)
    assert (gap(d, 0.0), gap(d, 0.5), gap(d, 1.0), gap(d, 7.0)) == (2.0, 4.0, 6.0, 6.0)


@settings(max_examples=300, deadline=None)
@given(
    per_minute=st.integers(0, 6), per_hour=st.integers(0, 30), per_day=st.integers(0, 60),
    rands=st.lists(st.floats(0, 1), min_size=1, max_size=120),
    delay_max=st.floats(0, 30), arrivals=st.lists(st.floats(0, 900), min_size=1, max_size=120),
)
def test_a_session_sending_as_soon_as_allowed_never_breaks_a_limit_or_a_gap(
    per_minute: int, per_hour: int, per_day: int, rands: list[float], delay_max: float,
    arrivals: list[float],
) -> None:
    limits = SendLimits(per_minute, per_hour, per_day)
    delay = DelayRange(delay_max / 3, delay_max)
    sent: list[float] = []
    not_before = 0.0
    now = 0.0
    for i, extra in enumerate(arrivals):
        now += extra
        t = next_allowed(now, not_before, sent, limits)
        assert t >= now and t >= not_before
        if sent:
            assert t - sent[-1] >= delay.min - 1e-9
        sent.append(t)
        not_before = t + gap(delay, rands[i % len(rands)])
        now = t
        for w in windows(limits):  # every window ending at this send holds at most its limit
            assert sum(1 for s in sent if t - w.seconds < s <= t) <= w.limit
        trim(sent, now, limits)


A = Attempt
W = Verdict


@pytest.mark.parametrize(
    ("attempt", "made", "verdict"),
    [
        (A(written=True, status=201), 1, W.SENT),
        (A(written=True, status=200), 10, W.SENT),
        (A(written=True, status=404), 1, W.WAIT),  # the instance lost the session
        (A(written=True, status=422), 1, W.WAIT),  # not WORKING there
        (A(written=True, status=429), 1, W.RETRY),
        (A(written=True, status=503), 1, W.RETRY),
        (A(written=True, status=500), 10, W.FAILED),  # attempts exhausted
        (A(written=False), 1, W.RETRY),  # connect refused: nothing was sent
        (A(written=False), 10, W.FAILED),
        (A(written=True), 1, W.UNKNOWN),  # the answer was lost: never sent again by itself
        (A(written=True), 10, W.UNKNOWN),
        (A(written=True, status=400), 1, W.FAILED),
        (A(written=True, status=401), 1, W.FAILED),
        (A(written=True, status=200, rate_limited=True), 1, W.SENT),
        (A(written=True, status=403, rate_limited=True), 1, W.RETRY),
    ],
)
def test_verdicts(attempt: Attempt, made: int, verdict: Verdict) -> None:
    assert judge(attempt, made, max_attempts=10) is verdict


def test_transitions() -> None:
    check(State.QUEUED, State.SENDING)
    check(State.SENDING, State.UNKNOWN)
    check(State.UNKNOWN, State.SENT)  # reconciled from the instance's own events
    for final in (State.SENT, State.CANCELLED, State.EXPIRED):
        assert not TRANSITIONS[final]
    with pytest.raises(IllegalTransition):
        check(State.SENDING, State.CANCELLED)  # a sending message cannot be cancelled
    with pytest.raises(IllegalTransition):
        check(State.SENT, State.QUEUED)
    assert State.SENDING not in FINAL and State.QUEUED not in FINAL


@pytest.mark.parametrize("session", ["s1", "a.b@c:d-e_f", "x" * 128])
def test_message_ids_carry_their_session(session: str) -> None:
    mid = message_id(session)
    assert mid.startswith("msg_") and session_of(mid) == session
    assert message_id(session) != mid


@pytest.mark.parametrize("bad", ["", "msg_", "cmp_01HZZZZZZZZZZZZZZZZZZZZZZZ.s", "msg_short.s", "msg_" + "0" * 26 + "s"])
def test_malformed_message_ids_name_no_session(bad: str) -> None:
    assert session_of(bad) is None


# -- the stored form (codec) ------------------------------------------------------------------

_text = st.text(max_size=40)
_opt_text = st.none() | st.text(min_size=1, max_size=40)
_time = st.floats(min_value=1_700_000_000, max_value=2_000_000_000, allow_nan=False)


@settings(max_examples=300)
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH"]), path=_text, query=_text,
    body=st.binary(max_size=64), content_type=st.sampled_from(["application/json", "text/plain", ""]),
    request_id=_text, seq=st.integers(min_value=0, max_value=10**15 - 1),
    high=st.booleans(), campaign=_opt_text, ref=_opt_text, not_before=st.just(0.0) | _time,
    expires=st.just(0.0) | _time, state=st.sampled_from(list(State)),
    attempts=st.integers(min_value=0, max_value=99), error=_opt_text, instance=_opt_text,
    response=st.none() | st.fixed_dictionaries({"status": st.integers(100, 599), "body": _text}),
    finished=st.none() | _time,
)
def test_a_message_survives_its_stored_form(
        method: str, path: str, query: str, body: bytes, content_type: str, request_id: str,
        seq: int, high: bool, campaign: str | None, ref: str | None, not_before: float,
        expires: float, state: State, attempts: int, error: str | None, instance: str | None,
        response: dict[str, object] | None, finished: float | None) -> None:
    m = Message(message_id("s-1"), "s-1", Request(method, path, query, body, content_type, request_id),
                created=time_of(seq), seq=seq, priority=Priority.HIGH if high else Priority.NORMAL,
                campaign=campaign, ref=ref, not_before=not_before, expires=expires, state=state,
                attempts=attempts, error=error, instance=instance, response=response,
                finished=finished)
    raw = codec.encode(m)
    assert raw.index(b"\n") == len(codec.encode_meta(m))  # the body starts after the meta
    got = codec.decode(m.id, "s-1", raw)
    assert got.request == m.request and got.created == pytest.approx(m.created, abs=1e-6)
    # times kept to the millisecond (as seconds from the creation)
    assert got.not_before == pytest.approx(m.not_before, abs=2e-3)
    assert got.expires == pytest.approx(m.expires, abs=2e-3)
    got.created, got.not_before, got.expires = m.created, m.not_before, m.expires
    assert got == m


# -- ban signals, stalls (signals) ------------------------------------------------------------

LIMITED = Attempt(written=True, status=429)
FAIL500 = Attempt(written=True, status=500)
OK201 = Attempt(written=True, status=201)


@pytest.mark.parametrize(("streak", "attempt", "verdict", "after", "paused"), [
    (0, LIMITED, Verdict.RETRY, 0, True),  # 429: pause at once
    (3, Attempt(written=True, status=500, rate_limited=True), Verdict.RETRY, 0, True),
    (0, OK201, Verdict.SENT, 0, False),
    (4, OK201, Verdict.SENT, 0, False),  # a send ends the run
    (2, Attempt(written=True, status=422), Verdict.WAIT, 2, False),  # not ready: not a failure
    (3, FAIL500, Verdict.RETRY, 4, False),
    (4, FAIL500, Verdict.RETRY, 0, True),  # the fifth in a row
    (4, Attempt(written=True, status=400), Verdict.FAILED, 0, True),
])
def test_ban_signals(streak: int, attempt: Attempt, verdict: Verdict, after: int, paused: bool) -> None:
    got, why = after_attempt(streak, attempt, verdict, 5)
    assert (got, why is not None) == (after, paused)


def test_status_pauses_and_stalls() -> None:
    assert status_pause("FAILED") and status_pause("STOPPED")
    assert status_pause("WORKING") is None and status_pause(None) is None
    w = StallWatch()
    assert w.check([("c1", 5, True), ("c2", 0, False)], 0.0, 600) == []
    assert w.check([("c1", 5, True)], 599.0, 600) == []
    assert w.check([("c1", 5, True)], 601.0, 600) == ["c1"]
    assert w.check([("c1", 5, True)], 1300.0, 600) == []  # told once
    assert w.check([("c1", 6, True)], 1400.0, 600) == []  # moved: re-armed
    assert w.check([("c1", 6, True)], 2001.0, 600) == ["c1"]
