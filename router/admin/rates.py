"""Per-instance rates for the dashboard: requests/s, error share and p99 over the last few
seconds, from the cumulative counters the data path keeps (``router.stats``).

``Sampler`` takes a snapshot a second (no work on the data path); ``window_rates`` and
``quantile`` are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from router.stats import BUCKETS, RequestStats

WINDOW = 10.0  # seconds the rates are taken over
INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # loop time
    count: int
    errors: int  # 5xx answers
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rates:
    rps: float
    error_rate: float  # share of answers that were 5xx, 0..1
    p99: float | None  # seconds; None without requests in the window


def snapshot(stats: RequestStats, at: float) -> Snapshot:
    errors = sum(n for code, n in stats.codes.items() if code >= 500)
    return Snapshot(at, stats.count, errors, tuple(stats.buckets))


def quantile(counts: Sequence[int], q: float, bounds: Sequence[float] = BUCKETS) -> float | None:
    """The ``q`` quantile of a histogram (non-cumulative ``counts``, one more than
    ``bounds`` for +Inf), interpolated linearly inside its bucket like Prometheus'
    ``histogram_quantile``; the last finite bound when it falls in +Inf."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * ((rank - seen) / n)
        seen += n
    return bounds[-1]


def window_rates(history: Iterable[Snapshot]) -> Rates:
    """Rates between the oldest and the newest snapshot."""
    snaps = list(history)
    if len(snaps) < 2:
        return Rates(0.0, 0.0, None)
    first, last = snaps[0], snaps[-1]
    span = last.at - first.at
    n = last.count - first.count
    if span <= 0 or n <= 0:
        return Rates(0.0, 0.0, None)
    deltas = [b - a for a, b in zip(first.buckets, last.buckets, strict=True)]
    p99 = quantile(deltas, 0.99)
    return Rates(n / span, (last.errors - first.errors) / n, p99 if p99 is None or math.isfinite(p99) else None)


class Sampler:
    """Keeps ``WINDOW`` seconds of snapshots per source (instance name -> its stats)."""

    def __init__(self, sources: Callable[[], Iterable[tuple[str, RequestStats]]],
                 clock: Callable[[], float]) -> None:
        self._sources = sources
        self._clock = clock
        self._history: dict[str, deque[Snapshot]] = {}

    def sample(self) -> None:
        now = self._clock()
        keep = int(WINDOW / INTERVAL) + 1
        seen = set()
        for name, stats in self._sources():
            seen.add(name)
            h = self._history.get(name)
            if h is None:
                h = self._history[name] = deque(maxlen=keep)
            h.append(snapshot(stats, now))
        for gone in set(self._history) - seen:
            del self._history[gone]

    def rates(self, name: str) -> Rates:
        return window_rates(self._history.get(name, ()))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a sampling hiccup must not end the loop
                self.sample()
            await asyncio.sleep(INTERVAL)
