"""Dashboard rates (pure): quantiles from histogram buckets, rates over a window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.admin.rates import Sampler, Snapshot, quantile, window_rates
from router.stats import BUCKETS, RequestStats

NB = len(BUCKETS) + 1


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    counts = [0] * NB
    counts[1] = 100  # all in (0.001, 0.0025]
    assert quantile(counts, 0.5) == pytest.approx(0.001 + 0.0015 * 0.5)
    assert quantile(counts, 0.99) == pytest.approx(0.001 + 0.0015 * 0.99)
    assert quantile([0] * NB, 0.99) is None
    counts = [0] * NB
    counts[-1] = 5  # +Inf: the last finite bound
    assert quantile(counts, 0.99) == BUCKETS[-1]


@given(st.lists(st.integers(0, 1000), min_size=NB, max_size=NB), st.floats(0.01, 1.0))
def test_quantile_stays_within_the_bucket_holding_its_rank(counts: list[int], q: float) -> None:
    v = quantile(counts, q)
    if sum(counts) == 0:
        assert v is None
        return
    assert v is not None and 0.0 <= v <= BUCKETS[-1]
    # Monotone in q.
    higher = quantile(counts, min(1.0, q + 0.1))
    assert higher is not None and higher >= v - 1e-12


def test_window_rates() -> None:
    a = Snapshot(10.0, 100, 1, tuple([0] * NB))
    b_buckets = [0] * NB
    b_buckets[0] = 200
    b = Snapshot(12.0, 300, 11, tuple(b_buckets))
    r = window_rates([a, b])
    assert r.rps == pytest.approx(100.0)
    assert r.error_rate == pytest.approx(10 / 200)
    assert r.p99 is not None and r.p99 <= BUCKETS[0]
    assert window_rates([a]).rps == 0.0 and window_rates([a, a]).p99 is None


def test_sampler_follows_sources_that_come_and_go() -> None:
    now = [0.0]
    stats = {"n1": RequestStats(), "n2": RequestStats()}
    s = Sampler(lambda: list(stats.items()), lambda: now[0])
    s.sample()
    for _ in range(50):
        stats["n1"].observe(200, 0.002)
    stats["n1"].observe(502, 0.002)
    now[0] = 1.0
    s.sample()
    assert s.rates("n1").rps == pytest.approx(51.0)
    assert s.rates("n1").error_rate == pytest.approx(1 / 51)
    assert s.rates("n2").rps == 0.0
    del stats["n2"]
    s.sample()
    assert s.rates("n2").rps == 0.0 and "n2" not in s._history
