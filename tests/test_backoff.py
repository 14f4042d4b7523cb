"""router.backoff: the one delay formula (tables and properties)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router import backoff
from router.backoff import Backoff
from router.config.model import RetryPolicy


@pytest.mark.parametrize(
    ("policy", "base", "cap", "delays"),
    [
        ("constant", 2.0, 10.0, [2, 2, 2, 2]),
        ("linear", 2.0, 7.0, [2, 4, 6, 7]),
        ("exponential", 1.0, 5.0, [1, 2, 4, 5]),
        ("exponential", 0.0, 5.0, [0, 0, 0, 0]),
        ("exponential", 3.0, 1.0, [1, 1, 1, 1]),  # the cap wins over the base
    ],
)
def test_policies_without_jitter(policy: RetryPolicy, base: float, cap: float,
                                 delays: list[float]) -> None:
    assert [backoff.delay(n, base=base, cap=cap, policy=policy) for n in (1, 2, 3, 4)] == delays


def test_jitter_scales_around_the_raw_delay_and_stays_under_the_cap() -> None:
    assert backoff.delay(2, base=1.0, cap=10.0, jitter=0.2, rand=0.0) == pytest.approx(1.6)
    assert backoff.delay(2, base=1.0, cap=10.0, jitter=0.2, rand=1.0) == pytest.approx(2.4)
    assert backoff.delay(9, base=1.0, cap=10.0, jitter=0.2, rand=1.0) == 10.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff.delay(10**9, base=0.5, cap=30.0) == 30.0


@given(n=st.integers(-5, 10**6), base=st.floats(-1, 1e6), cap=st.floats(-1, 1e6),
       jitter=st.floats(-1, 2), rand=st.floats(-1, 2),
       policy=st.sampled_from(["constant", "linear", "exponential"]))
def test_always_within_zero_and_cap(n: int, base: float, cap: float, jitter: float, rand: float,
                                    policy: RetryPolicy) -> None:
    d = backoff.delay(n, base=base, cap=cap, policy=policy, jitter=jitter, rand=rand)
    assert 0.0 <= d <= max(0.0, cap)


@given(base=st.floats(0.001, 100), cap=st.floats(0.001, 1e4), n=st.integers(1, 200))
def test_exponential_without_jitter_never_shrinks(base: float, cap: float, n: int) -> None:
    assert backoff.delay(n + 1, base=base, cap=cap) >= backoff.delay(n, base=base, cap=cap)


def test_backoff_counts_failures_and_resets() -> None:
    b = Backoff(base=0.5, cap=3.0, jitter=0.0)
    assert [b.next() for _ in range(4)] == [0.5, 1.0, 2.0, 3.0]
    b.reset()
    assert b.next() == 0.5
