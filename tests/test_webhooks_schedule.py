"""Pure parts of the webhook relay: retry schedule, breaker, event filters, batcher."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.batcher import Batcher
from router.config.model import RetryConfig, RetryPolicy
from router.webhooks.filters import EventFilter, target_key, target_keys
from router.webhooks.schedule import Breaker, BreakerState, exhausted, retry_delay

policies: st.SearchStrategy[RetryPolicy] = st.sampled_from(["constant", "linear", "exponential"])
delays = st.floats(min_value=0.0, max_value=600.0, allow_nan=False)
fractions = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def retry_configs(draw: st.DrawFn) -> RetryConfig:
    return RetryConfig(policy=draw(policies), delay=draw(delays), max_delay=draw(delays),
                       attempts=draw(st.integers(1, 50)), jitter=draw(fractions))


def test_waha_examples_without_jitter() -> None:
    const = RetryConfig("constant", 2.0, 300.0, 15, 0.0)
    lin = RetryConfig("linear", 2.0, 300.0, 15, 0.0)
    exp = RetryConfig("exponential", 2.0, 300.0, 15, 0.0)
    assert [retry_delay(const, n, 0.3) for n in (1, 2, 3)] == [2, 2, 2]
    assert [retry_delay(lin, n, 0.3) for n in (1, 2, 3)] == [2, 4, 6]
    assert [retry_delay(exp, n, 0.3) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    # capped
    assert retry_delay(exp, 9, 0.5) == 300.0
    assert retry_delay(RetryConfig("linear", 5.0, 12.0, 10, 0.0), 3, 0.9) == 12.0


def test_jitter_extremes() -> None:
    exp = RetryConfig("exponential", 2.0, 300.0, 15, 0.2)
    assert retry_delay(exp, 2, 0.0) == pytest.approx(3.2)
    assert retry_delay(exp, 2, 0.5) == pytest.approx(4.0)
    assert retry_delay(exp, 2, 1.0) == pytest.approx(4.8)


@given(retry_configs(), st.integers(-5, 10_000), fractions)
def test_delay_within_bounds(r: RetryConfig, attempt: int, rand: float) -> None:
    d = retry_delay(r, attempt, rand)
    assert 0.0 <= d <= r.max_delay
    n = max(1, attempt)
    base = {"constant": r.delay, "linear": r.delay * n,
            "exponential": r.delay * 2.0 ** min(n - 1, 64)}[r.policy]
    base = min(base, r.max_delay)
    assert base * (1 - r.jitter) - 1e-9 <= d <= min(r.max_delay, base * (1 + r.jitter)) + 1e-9


@given(retry_configs(), st.integers(1, 200), fractions)
def test_delay_grows_with_attempts_without_jitter(r: RetryConfig, attempt: int, rand: float) -> None:
    flat = RetryConfig(r.policy, r.delay, r.max_delay, r.attempts, 0.0)
    assert retry_delay(flat, attempt, rand) <= retry_delay(flat, attempt + 1, rand)
    if r.policy == "constant":
        assert retry_delay(flat, attempt, rand) == min(r.delay, r.max_delay)


@given(retry_configs(), st.integers(1, 100), fractions, fractions)
def test_jitter_is_monotonic_in_rand(r: RetryConfig, attempt: int, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert retry_delay(r, attempt, lo) <= retry_delay(r, attempt, hi) + 1e-9


@given(retry_configs(), st.integers(0, 100))
def test_exhausted(r: RetryConfig, made: int) -> None:
    assert exhausted(r, made) == (made >= r.attempts)


def state(b: Breaker) -> BreakerState:
    """``b.state`` read afresh: mypy would carry an assert's narrowing of the attribute past
    the calls that change it."""
    return b.state


def test_breaker_opens_probes_and_grows() -> None:
    b = Breaker(threshold=3, base=1.0, max_open=5.0)
    for _ in range(2):
        assert b.allow(0.0)
        b.failure(0.0)
    assert state(b) == "closed"
    b.failure(0.0)
    assert state(b) == "open" and not b.allow(0.5) and b.resume_at() == 1.0
    b.failure(0.6)  # a late answer from before it opened: no extension
    assert b.resume_at() == 1.0
    assert b.allow(1.0) and state(b) == "half_open"
    assert not b.allow(1.0)  # one probe at a time
    b.failure(1.1)
    assert state(b) == "open" and b.resume_at() == pytest.approx(3.1)
    periods = []
    now = 3.1
    for _ in range(5):
        assert b.allow(now)
        b.failure(now)
        periods.append(b.open_until - now)
        now = b.open_until
    assert periods == pytest.approx([4.0, 5.0, 5.0, 5.0, 5.0])
    assert b.allow(now)
    b.success()
    assert state(b) == "closed" and b.failures == 0 and b.allow(now)


@given(st.lists(st.booleans(), max_size=200))
def test_breaker_bounds_requests_while_down(outcomes: list[bool]) -> None:
    """While everything fails, requests allowed per open period never exceed one."""
    b = Breaker(threshold=5, base=1.0, max_open=8.0)
    now = 0.0
    sent_in_open = 0
    for _ in range(len(outcomes)):
        if b.allow(now):
            if b.state == "half_open":
                sent_in_open += 1
            b.failure(now)
        now += 0.25
    assert sent_in_open <= now / 1.0 + 1


def test_filters() -> None:
    f = EventFilter(["message.*", "session.status"])
    assert f("message") and f("message.any") and f("message.ack") and f("session.status")
    assert not f("messages") and not f("session.other") and not f("group.v2.join")
    assert EventFilter(["*"])("anything")
    g = EventFilter(["group.*", "call*"])
    assert g("group.v2.join") and g("call.received") and g("callx") and not g("message")
    assert not EventFilter([])("message")


def test_target_keys_stable_and_distinct() -> None:
    assert target_key("http://a/x") == target_key("http://a/x")
    assert len(target_key("http://a/x")) == 16
    keys = target_keys(["http://a/x", "http://b/y", "http://a/x"])
    assert keys[0] == target_key("http://a/x") and len(set(keys)) == 3
    assert target_keys(["http://b/y"])[0] == keys[1]  # position does not matter


async def test_batcher_coalesces_and_propagates_errors() -> None:
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        batches.append(items)
        await asyncio.sleep(0.01)
        if 13 in items:
            raise RuntimeError("boom")

    b = Batcher[int](flush, max_items=50)
    await asyncio.gather(*(b.submit([i]) for i in range(12)))
    results = await asyncio.gather(*(b.submit([i]) for i in range(12, 200)), return_exceptions=True)
    assert sorted(x for batch in batches for x in batch) == list(range(200))
    assert b.flushes == len(batches) < 20
    assert all(len(batch) <= 50 for batch in batches)
    failed = {i for i, r in zip(range(12, 200), results, strict=True) if isinstance(r, RuntimeError)}
    bad_batch = next(batch for batch in batches if 13 in batch)
    assert failed == set(bad_batch)


async def test_batcher_byte_limit() -> None:
    batches: list[list[bytes]] = []

    async def flush(items: list[bytes]) -> None:
        batches.append(items)
        await asyncio.sleep(0.005)

    b = Batcher[bytes](flush, max_items=1000, max_bytes=100, size=len)
    await asyncio.gather(*(b.submit([b"x" * 30]) for _ in range(20)), b.submit([b"y" * 500]))
    assert sum(len(batch) for batch in batches) == 21
    # at most 3 small items per flush; the oversized one goes alone (never stuck)
    assert all(sum(map(len, batch)) <= 100 or len(batch) == 1 for batch in batches)
