"""Retry schedule and per-target circuit breaker: pure, no I/O, time passed in.

``retry_delay`` follows WAHA's / Evolution's policies: after failed attempt ``n`` (1-based)
the next waits ``delay`` (constant), ``delay * n`` (linear) or ``delay * 2**(n-1)``
(exponential), capped at ``max_delay``, then scaled by ``1 +- jitter`` and capped again, so
the result is always within ``[0, max_delay]``.

``Breaker``: after ``threshold`` consecutive transient failures (connect errors, timeouts,
statuses outside 2xx and ``no_retry_statuses``) the target is *open*: nothing is sent to it
until ``open_until``; then one probe delivery is let through (*half-open*). Its success
closes the breaker; its failure opens it again for twice as long (capped at ``max_open``).
So a target that is down costs one request per open period, not a retry storm, and entries
that wait meanwhile do not use up their attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router import backoff
from router.config.model import RetryConfig


def retry_delay(retries: RetryConfig, attempt: int, rand: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` before the next one.

    ``rand`` in ``[0, 1]`` picks the jitter (0.5 = none): the factor is
    ``1 + jitter * (2 * rand - 1)``.
    """
    return backoff.delay(attempt, base=retries.delay, cap=retries.max_delay,
                         policy=retries.policy, jitter=retries.jitter, rand=rand)


def exhausted(retries: RetryConfig, attempts_made: int) -> bool:
    """True when no attempt is left after ``attempts_made`` failed ones."""
    return attempts_made >= max(1, retries.attempts)


BreakerState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Breaker:
    threshold: int = 10  # consecutive failures that open it (10: 30% random failures
    # open it with probability 0.3**10 ~ 6e-6 per window, i.e. practically never)
    base: float = 1.0  # first open period (s)
    max_open: float = 30.0
    state: BreakerState = "closed"
    failures: int = 0  # consecutive
    opens: int = 0  # consecutive openings without a success in between
    open_until: float = 0.0

    def allow(self, now: float) -> bool:
        """May one more delivery start now? In half-open, True once (the probe)."""
        if self.state == "closed":
            return True
        if self.state == "open" and now >= self.open_until:
            self.state = "half_open"
            return True
        return False

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.opens = 0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.opens += 1
            period = backoff.delay(self.opens, base=self.base, cap=self.max_open)
            self.state = "open"
            self.open_until = now + period
        # Failures reported while open come from deliveries started before it opened:
        # they say nothing new and do not extend the period.

    def resume_at(self) -> float | None:
        """When dispatch may resume if it is paused by the breaker, else None."""
        return self.open_until if self.state == "open" else None
