"""The leader's pure decision before moving a down instance's sessions elsewhere.

An instance whose agent holds its lease, or renewed it within ``failover.agent_memory``,
may still run its sessions (a partition, not a crash). Its sessions move only when

* the agent acknowledged the leader's stop order (it stopped everything locally), or
* the lease has been expired for at least ``fence_after + margin``: the agent, counting
  from a renewal sent no later than the one Redis last took, fenced itself by then.

Instances without an agent move at once, as before agents existed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from router.agent.keys import AgentRecord

__all__ = ["Verdict", "decide", "margin"]


class Verdict(enum.Enum):
    NO_AGENT = "no_agent"  # move now, as always
    ACKED = "acked"  # handoff: the agent stopped everything
    LAPSED = "lapsed"  # the agent has fenced itself (or is gone) by now
    WAIT = "wait"  # post the stop order (once) and look again


def margin(renew: float) -> float:
    """Slack on top of ``fence_after``: one renewal period (a stop sweep runs at most that
    late) plus a second for the stop calls themselves."""
    return renew + 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    wait: float = 0.0  # for WAIT: the longest the lease path can still take


def decide(rec: AgentRecord | None, order: str | None, memory: float) -> Decision:
    """``rec``: Redis' view of the agent; ``order``: the stop order this leader posted."""
    if rec is None or rec.age is None or (not rec.lease and rec.age > memory):
        return Decision(Verdict.NO_AGENT)
    if order is not None and rec.ack == order:
        return Decision(Verdict.ACKED)
    # The lease was set at the latest renewal with TTL fence_after: it expired at
    # age == fence_after, so it has been expired for age - fence_after.
    needed = 2 * rec.fence_after + margin(rec.renew)
    if not rec.lease and rec.age >= needed:
        return Decision(Verdict.LAPSED)
    return Decision(Verdict.WAIT, wait=needed - rec.age if not rec.lease else needed)
