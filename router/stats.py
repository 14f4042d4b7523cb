"""Request accounting on the hot path: plain ints and one bisect, no locks, no
prometheus-client calls (the collector in ``router.metrics`` reads these at scrape time)."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (seconds) of the latency histogram; +Inf is implicit.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class RequestStats:
    """Responses by status code and a latency histogram, for one instance (or the router)."""

    __slots__ = ("buckets", "codes", "count", "total")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, status: int, seconds: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def merge_into(self, buckets: list[int]) -> None:
        for i, n in enumerate(self.buckets):
            buckets[i] += n


class NullStats(RequestStats):
    """``metrics.enabled: false``: counts nothing (measures what accounting costs)."""

    __slots__ = ()

    def observe(self, status: int, seconds: float) -> None:
        pass


def new_stats(enabled: bool) -> RequestStats:
    return RequestStats() if enabled else NullStats()
