"""Tests for router.agent.fence: the agent's pure state machine, as a playbook table.

Each row is a story (events at given times) with the expected end state and actions.
Timing: renew every 1 s, fence after 3 s; the agent starts at t=100.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from router.agent.fence import (
    Ack,
    Action,
    AgentState,
    ExecuteOrder,
    Reconcile,
    Renew,
    SelfFence,
    StandDown,
    StopAll,
    Timing,
    on_order_done,
    on_renewed,
    on_tick,
    start,
)

pytestmark = pytest.mark.unit

T = Timing(renew=1.0, fence_after=3.0)


@dataclass(frozen=True)
class Tick:
    at: float


@dataclass(frozen=True)
class Renewed:
    """A renewal sent at ``sent`` answered at ``at``."""

    sent: float
    at: float
    ok: bool = True
    order: str | None = None


@dataclass(frozen=True)
class Done:
    order: str
    ok: bool = True


Event = Tick | Renewed | Done


def run(s: AgentState, events: list[Event]) -> tuple[AgentState, list[Action]]:
    out: list[Action] = []
    for ev in events:
        if isinstance(ev, Tick):
            s, actions = on_tick(s, ev.at, T)
        elif isinstance(ev, Renewed):
            s, actions = on_renewed(s, ev.ok, ev.sent, ev.at, T, ev.order)
        else:
            s, actions = on_order_done(s, ev.order, ev.ok)
        out.extend(actions)
    return s, out


FRESH = start(100.0)
# Running normally: last renewal sent at 100 answered, next due at 101.
RUNNING = AgentState(started=100.0, last_ok=100.0, next_renew=101.0)
FENCED = AgentState(started=100.0, last_ok=100.0, next_renew=104.0, fenced_since=103.0,
                    last_sweep=103.0)

TABLE: list[tuple[str, AgentState, list[Event], AgentState, list[Action]]] = [
    # -- renewing --
    ("start: renew at once", FRESH, [Tick(100.0)],
     replace(FRESH, renewing=100.0), [Renew()]),
    ("first renewal ok: reconcile (agent restarted)", FRESH,
     [Tick(100.0), Renewed(100.0, 100.01)], RUNNING, [Renew(), Reconcile()]),
    ("renew ok: nothing else", RUNNING, [Tick(101.0), Renewed(101.0, 101.02)],
     replace(RUNNING, last_ok=101.0, next_renew=102.0), [Renew()]),
    ("not yet due: idle", RUNNING, [Tick(100.5)], RUNNING, []),
    ("one renewal in flight at a time", RUNNING, [Tick(101.0), Tick(102.0)],
     replace(RUNNING, renewing=101.0), [Renew()]),
    ("a late reply does not move the lease back", replace(RUNNING, last_ok=101.0),
     [Renewed(100.5, 101.5)], replace(RUNNING, last_ok=101.0, next_renew=101.5), []),
    # -- Redis unreachable --
    ("unreachable for < fence_after: nothing", RUNNING,
     [Tick(101.0), Renewed(101.0, 102.0, ok=False), Tick(102.0),
      Renewed(102.0, 102.99, ok=False), Tick(102.99)],
     replace(RUNNING, next_renew=103.0), [Renew(), Renew()]),
    ("unreachable for fence_after: self-fence", RUNNING,
     [Tick(101.0), Renewed(101.0, 102.0, ok=False), Tick(102.0),
      Renewed(102.0, 103.0, ok=False), Tick(103.0)],
     replace(FENCED, renewing=103.0, next_renew=103.0),
     [Renew(), Renew(), Renew(), SelfFence(100.0)]),
    ("a renewal hanging past the deadline fences too", RUNNING, [Tick(101.0), Tick(103.0)],
     AgentState(started=100.0, last_ok=100.0, renewing=101.0, next_renew=101.0,
                fenced_since=103.0, last_sweep=103.0), [Renew(), SelfFence(100.0)]),
    ("never renewed since start: fence at start + fence_after", FRESH,
     [Tick(100.0), Renewed(100.0, 101.0, ok=False), Tick(103.0)],
     AgentState(started=100.0, renewing=103.0, next_renew=101.0, fenced_since=103.0,
                last_sweep=103.0), [Renew(), Renew(), SelfFence(100.0)]),
    ("fenced: keep stopping every renew", FENCED,
     [Tick(103.5), Tick(104.0), Renewed(104.0, 104.5, ok=False), Tick(105.0)],
     replace(FENCED, renewing=105.0, last_sweep=105.0, next_renew=105.0),
     [Renew(), StopAll(), Renew(), StopAll()]),
    # -- healing --
    ("renewed after fencing: stand down", FENCED,
     [Tick(104.0), Renewed(104.0, 104.5)],
     AgentState(started=100.0, last_ok=104.0, next_renew=105.0),
     [Renew(), StopAll(), StandDown(1.5)]),
    ("a reply to a renewal sent before fencing does not heal", FENCED,
     [Renewed(102.5, 103.2)], replace(FENCED, next_renew=103.5), []),
    ("healing with an order posted: stand down, then execute", FENCED,
     [Renewed(104.0, 104.0, order="o1")],
     AgentState(started=100.0, last_ok=104.0, next_renew=105.0, executing="o1"),
     [StandDown(1.0), ExecuteOrder("o1")]),
    # -- stop orders --
    ("a stop order: stop, then ack", RUNNING,
     [Tick(101.0), Renewed(101.0, 101.1, order="o1"), Done("o1")],
     replace(RUNNING, last_ok=101.0, next_renew=102.0, acked="o1"),
     [Renew(), ExecuteOrder("o1"), Ack("o1")]),
    ("an order is executed once while running", RUNNING,
     [Renewed(101.0, 101.1, order="o1"), Renewed(102.0, 102.1, order="o1")],
     replace(RUNNING, last_ok=102.0, next_renew=103.0, executing="o1"), [ExecuteOrder("o1")]),
    ("an acked order is not executed again", replace(RUNNING, acked="o1"),
     [Renewed(101.0, 101.1, order="o1")],
     replace(RUNNING, last_ok=101.0, next_renew=102.0, acked="o1"), []),
    ("a failed order is retried at the next renewal", RUNNING,
     [Renewed(101.0, 101.1, order="o1"), Done("o1", ok=False), Renewed(102.0, 102.1, order="o1")],
     replace(RUNNING, last_ok=102.0, next_renew=103.0, executing="o1"),
     [ExecuteOrder("o1"), ExecuteOrder("o1")]),
    ("a new order after an acked one", replace(RUNNING, acked="o1"),
     [Renewed(101.0, 101.1, order="o2"), Done("o2")],
     replace(RUNNING, last_ok=101.0, next_renew=102.0, acked="o2"),
     [ExecuteOrder("o2"), Ack("o2")]),
    ("a stale completion is ignored", replace(RUNNING, executing="o2"), [Done("o1")],
     replace(RUNNING, executing="o2"), []),
    ("no renewal while fenced reads no order", FENCED,
     [Renewed(103.5, 103.6, ok=False, order="o1")], replace(FENCED, next_renew=104.5), []),
    # -- agent restarted --
    ("restarted while Redis is down: fences after fence_after", start(200.0),
     [Tick(200.0), Renewed(200.0, 200.5, ok=False), Tick(201.0), Renewed(201.0, 202.0, ok=False),
      Tick(202.9)],
     AgentState(started=200.0, renewing=202.9, next_renew=202.0), [Renew(), Renew(), Renew()]),
    ("restarted, Redis fine: reconcile once", start(200.0),
     [Tick(200.0), Renewed(200.0, 200.1), Tick(201.0), Renewed(201.0, 201.1)],
     AgentState(started=200.0, last_ok=201.0, next_renew=202.0),
     [Renew(), Reconcile(), Renew()]),
]


@pytest.mark.parametrize(("start_state", "events", "end", "actions"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_playbook(start_state: AgentState, events: list[Event], end: AgentState,
                  actions: list[Action]) -> None:
    got, got_actions = run(start_state, events)
    assert got_actions == actions
    assert got == end


def test_fenced_agent_never_believes_it_holds_past_redis_expiry() -> None:
    """Whatever the reply delays, the agent fences no later than the lease it last set in
    Redis expires (set at arrival, TTL fence_after): sent <= arrival."""
    s = start(0.0)
    s, _ = on_tick(s, 0.0, T)
    s, _ = on_renewed(s, True, 0.0, 0.8, T)  # arrived in Redis at some time in [0, 0.8]
    for now in (1.0, 2.0):
        s, _ = on_tick(s, now, T)
        s, _ = on_renewed(s, False, now, now + 0.5, T)
    s, actions = on_tick(s, 3.0, T)
    assert s.fenced and SelfFence(0.0) in actions
