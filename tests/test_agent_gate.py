"""Tests for router.agent.gate (the leader's pure decision) and the agent config checks."""

from __future__ import annotations

import pytest

from router.agent.gate import Decision, Verdict, decide, margin
from router.agent.keys import AgentRecord, keys
from router.config import ConfigError, parse_config

pytestmark = pytest.mark.unit

MEMORY = 600.0
# fence_after 3 s, renew 1 s: margin 2 s, so sessions move once the agent last renewed
# 2 * 3 + 2 = 8 s ago (lease expired at 3 s, plus fence_after plus the margin).


def rec(lease: bool, age: float | None, ack: str | None = None) -> AgentRecord:
    return AgentRecord(lease=lease, age=age, fence_after=3.0, ack=ack, renew=1.0)


TABLE: list[tuple[str, AgentRecord | None, str | None, Decision]] = [
    ("no record: no agent", None, None, Decision(Verdict.NO_AGENT)),
    ("never renewed: no agent", rec(False, None), None, Decision(Verdict.NO_AGENT)),
    ("renewed longer than agent_memory ago: no agent", rec(False, 601.0), None,
     Decision(Verdict.NO_AGENT)),
    ("live lease: wait (post the order)", rec(True, 0.2), None, Decision(Verdict.WAIT, 8.0)),
    ("live lease, order posted, not acked: wait", rec(True, 0.5, ack="old"), "o1",
     Decision(Verdict.WAIT, 8.0)),
    ("acked: handoff", rec(True, 0.5, ack="o1"), "o1", Decision(Verdict.ACKED)),
    ("an ack of another order does not count", rec(True, 0.5, ack="o0"), None,
     Decision(Verdict.WAIT, 8.0)),
    ("lease expired, not long enough: wait", rec(False, 7.5), "o1", Decision(Verdict.WAIT, 0.5)),
    ("lease expired for fence_after + margin: lapsed", rec(False, 8.0), "o1",
     Decision(Verdict.LAPSED)),
    ("recently live (within memory), lapsed long ago", rec(False, 300.0), None,
     Decision(Verdict.LAPSED)),
]


@pytest.mark.parametrize(("record", "order", "expected"), [r[1:] for r in TABLE],
                         ids=[r[0] for r in TABLE])
def test_gate(record: AgentRecord | None, order: str | None, expected: Decision) -> None:
    assert decide(record, order, MEMORY) == expected


def test_margin_and_keys() -> None:
    assert margin(1.0) == 2.0
    k = keys("wa-router:", "node-1")
    assert k.lease == "wa-router:agent:{i:node-1}"
    assert {k.seen, k.order, k.ack} == {"wa-router:agent:{i:node-1}:seen",
                                         "wa-router:agent:{i:node-1}:stop",
                                         "wa-router:agent:{i:node-1}:stopped"}


INSTANCES = "instances: [{name: a, url: 'http://127.0.0.1:3001'}]\n"


@pytest.mark.parametrize(("text", "problem"), [
    (INSTANCES + "failover: {grace: 4s}\nagent: {instance: a, url: 'http://127.0.0.1:3001'}\n",
     "failover.grace: must be >= agent.fence_after plus the fencing margin (5s): got 4s"),
    (INSTANCES + "agent: {instance: a, url: 'http://127.0.0.1:3001', renew: 2s, fence_after: 2s}\n",
     "agent.fence_after: must be longer than renew (2s <= 2s): the agent would fence itself "
     "between two renewals"),
    (INSTANCES + "agent: {url: 'http://127.0.0.1:3001'}\n", "agent.instance: required"),
])
def test_check_config_refuses(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert problem in e.value.problems


def test_agent_file_needs_no_instances_and_grace_5s_is_enough() -> None:
    c = parse_config("agent: {instance: a, url: 'http://127.0.0.1:3001'}\n", agent=True)
    assert c.agent is not None and c.agent.fence_after == 3.0 and c.agent.renew == 1.0
    assert c.failover.grace == 5.0 and c.failover.agent_memory == 600.0
    with pytest.raises(ConfigError) as e:
        parse_config("store: {prefix: 'x:'}\n", agent=True)
    assert "agent: required" in e.value.problems
