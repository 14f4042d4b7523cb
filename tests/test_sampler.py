"""``tests.sampler.double_live``: the partition tests' measure, checked with tables."""

from __future__ import annotations

import pytest

from tests.sampler import Sample, double_live

F = frozenset
S1 = F({"s1"})
NONE: frozenset[str] = F()


@pytest.mark.parametrize(
    ("samples", "dead", "seconds", "who"),
    [
        # one sim only: never double
        ([(0.0, "a", S1), (0.1, "a", S1), (0.2, "a", S1)], {}, 0.0, set()),
        # a hands over cleanly: stops at 0.2, b starts at 0.3
        ([(0.0, "a", S1), (0.05, "b", NONE), (0.1, "a", S1), (0.15, "b", NONE),
          (0.2, "a", NONE), (0.25, "b", NONE), (0.3, "b", S1), (0.4, "b", S1)], {}, 0.0, set()),
        # b starts at 0.15 while a runs until its sample at 0.3 says stopped
        ([(0.0, "a", S1), (0.1, "a", S1), (0.15, "b", S1), (0.2, "a", S1), (0.25, "b", S1),
          (0.3, "a", NONE), (0.35, "b", S1)], {}, pytest.approx(0.15), {"s1"}),
        # a stops answering: its last answer stands (it may still run) ...
        # (both from 0.05 until a's last sample runs out at 0.1 + hold)
        ([(0.0, "a", S1), (0.05, "b", S1), (0.1, "a", None), (0.15, "b", S1)], {},
         pytest.approx(0.25), {"s1"}),
        # ... unless it was killed: nothing runs there
        ([(0.0, "a", S1), (0.05, "b", NONE), (0.1, "a", None), (0.15, "b", S1),
          (0.2, "a", None)], {"a": True}, 0.0, set()),
        # a gap in one sim's samples: its last answer stands for at most ``hold`` (0.2 s)
        ([(0.0, "a", S1), (0.0, "b", S1), (1.0, "a", NONE), (1.0, "b", S1)], {},
         pytest.approx(0.2), {"s1"}),
        # different sessions on the two sims are not double
        ([(0.0, "a", F({"x"})), (0.0, "b", F({"y"})), (0.1, "a", F({"x"})),
          (0.1, "b", F({"y"}))], {}, 0.0, set()),
    ],
)
def test_double_live(samples: list[Sample], dead: dict[str, bool], seconds: float,
                     who: set[str]) -> None:
    assert double_live(samples, unanswered=dead) == (seconds, who)
