"""The one backoff formula: every retry, ejection, breaker and restart delay comes from here.

``delay(n)`` after the ``n``-th failure (1-based): ``base`` (constant), ``base * n``
(linear) or ``base * 2**(n-1)`` (exponential), capped at ``cap``, then scaled by
``1 + jitter * (2 * rand - 1)`` and capped again: always within ``[0, cap]``. Pure: the
random draw is passed in (``rand`` in [0, 1]; 0.5 means no jitter).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from router.config.model import RetryPolicy as Policy

# 2**64 seconds is already far beyond any cap; a larger exponent would overflow a float.
_MAX_EXPONENT = 64


def delay(n: int, *, base: float, cap: float, policy: Policy = "exponential",
          jitter: float = 0.0, rand: float = 0.5) -> float:
    """Seconds to wait after the ``n``-th consecutive failure (``n < 1`` counts as 1)."""
    n = max(1, n)
    if policy == "constant":
        raw = base
    elif policy == "linear":
        raw = base * n
    else:
        raw = base * 2.0 ** min(n - 1, _MAX_EXPONENT)
    cap = max(0.0, cap)
    raw = min(max(0.0, raw), cap)
    jitter = min(max(jitter, 0.0), 1.0)
    rand = min(max(rand, 0.0), 1.0)
    return min(cap, max(0.0, raw * (1.0 + jitter * (2.0 * rand - 1.0))))


@dataclass(slots=True)
class Backoff:
    """Consecutive failures of one loop: ``next()`` is the delay after one more failure,
    ``reset()`` after a success. For loops that retry a dependency (Redis, a target)."""

    base: float = 0.05
    cap: float = 2.0
    jitter: float = 0.5
    policy: Policy = "exponential"
    failures: int = 0
    rand: Callable[[], float] = random.random

    def next(self) -> float:
        self.failures += 1
        return delay(self.failures, base=self.base, cap=self.cap, policy=self.policy,
                     jitter=self.jitter, rand=self.rand())

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.failures = 0
