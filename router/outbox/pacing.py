"""When may a session send next: the pacing gap and the per-window limits (pure).

WhatsApp bans numbers that send like machines, so two sends of one session are separated by
a random gap within ``outbox.delay``, and ``outbox.limits`` caps sends per minute, hour and
day. ``next_allowed`` answers the earliest time that satisfies both, from the session's
recent send times; moving later only lets old sends leave their windows, so one pass over
the windows finds it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from router.config.model import DelayRange, SendLimits

_MARGIN = 0.001


@dataclass(frozen=True, slots=True)
class Window:
    seconds: float
    limit: int


def windows(limits: SendLimits) -> tuple[Window, ...]:
    """The limited windows, shortest first (a limit of 0 means none)."""
    all_ = (Window(60.0, limits.per_minute), Window(3600.0, limits.per_hour),
            Window(86400.0, limits.per_day))
    return tuple(w for w in all_ if w.limit > 0)


def horizon(limits: SendLimits) -> float:
    """How far back send times matter (older ones can be forgotten)."""
    ws = windows(limits)
    return max((w.seconds for w in ws), default=0.0)


def gap(delay: DelayRange, rand: float) -> float:
    """The pause after a send, ``rand`` in [0, 1] picking it within ``[min, max]``."""
    return delay.min + (delay.max - delay.min) * min(max(rand, 0.0), 1.0)


def next_allowed(now: float, not_before: float, sent: Sequence[float], limits: SendLimits) -> float:
    """The earliest time >= ``now`` and >= ``not_before`` (the last send plus its gap) at which
    one more send keeps every window within its limit. ``sent``: send times, ascending."""
    t = max(now, not_before)
    # One pass is enough: moving t later only lets sends leave the windows already checked.
    for w in windows(limits):
        # Sends in (t - seconds, t]; all are <= now <= t, so this is the window's count.
        first = bisect.bisect_right(sent, t - w.seconds)
        inside = len(sent) - first
        if inside >= w.limit:
            # Wait until enough of them have left: the (inside - limit + 1)-th oldest, a
            # millisecond past (so float rounding cannot keep it inside).
            t = sent[first + inside - w.limit] + w.seconds + _MARGIN
    return t


def trim(sent: list[float], now: float, limits: SendLimits) -> None:
    """Forget send times no window can count any more (in place)."""
    cut = bisect.bisect_right(sent, now - horizon(limits))
    if cut:
        del sent[:cut]
