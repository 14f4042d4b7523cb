"""Component layer: the leader's fencing gate in the whole app, with a fake agent source
on the manual clock (the agent's Redis keys simulated in memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from router.agent.keys import AgentRecord
from router.app import create_app
from router.config import parse_config
from tests.fakes import FakeInstances, ManualClock
from tests.procs import free_port
from tests.test_component import World, config_text

pytestmark = pytest.mark.component


@dataclass
class FakeAgent:
    renewed: float  # clock time of the latest renewal
    renewing: bool = True  # False: cut off from Redis (or dead)
    obeys: bool = True  # executes and acks stop orders
    stops: list[str] = field(default_factory=list)


class FakeAgents:
    """Agents as the leader sees them through Redis, driven by the manual clock."""

    def __init__(self, clock: ManualClock, fakes: FakeInstances) -> None:
        self.clock = clock
        self.fakes = fakes
        self.agents: dict[str, FakeAgent] = {}
        self.orders: dict[str, str] = {}
        self.acks: dict[str, str] = {}

    def _age(self, a: FakeAgent) -> float:
        return 0.0 if a.renewing else self.clock.now() - a.renewed

    async def read(self, instance: str) -> AgentRecord:
        a = self.agents.get(instance)
        if a is None:
            return AgentRecord(False, None, 0.0, None)
        age = self._age(a)
        return AgentRecord(age < 3.0, age, 3.0, self.acks.get(instance), 1.0)

    async def post_order(self, instance: str, order: str) -> None:
        self.orders[instance] = order
        a = self.agents[instance]
        if a.renewing and a.obeys:  # the agent sees it at its next renewal: stop, then ack
            for s in list(self.fakes[instance].sessions):
                self.fakes[instance].sessions.pop(s)
                a.stops.append(s)
            self.acks[instance] = order

    async def clear_order(self, instance: str) -> None:
        self.orders.pop(instance, None)

    async def leases(self, instances: list[str]) -> list[bool]:
        return [i in self.agents and self._age(self.agents[i]) < 3.0 for i in instances]


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, FakeAgents]]:
    clock = ManualClock()
    fakes = FakeInstances(clock, ["node-1", "node-2", "node-3", "node-4"])
    agents = FakeAgents(clock, fakes)
    ports = (free_port(), free_port())
    app = create_app(parse_config(config_text(fakes, ports)), transport=fakes, clock=clock,
                     agents=agents)
    await app.start()
    await clock.run_until(lambda: app.leadership.is_leader, limit=5)
    yield World(app, clock, fakes, ports), agents
    await app.stop()


async def lost_sessions(w: World) -> list[str]:
    where = await w.place([f"s{i}" for i in range(30)])
    lost = [s for s, i in where.items() if i == "node-2"]
    assert lost
    return lost


def on(w: World, sessions: list[str], instance: str) -> bool:
    return all((a := w.app.store.cached(s)) is not None and a.instance == instance
               for s in sessions)


async def test_without_agent_failover_is_as_before(world: tuple[World, FakeAgents]) -> None:
    w, _ = world
    lost = await lost_sessions(w)
    w.fakes["node-2"].crash()
    took = await w.clock.run_until(lambda: not any(on(w, [s], "node-2") for s in lost), limit=15)
    assert took <= 8.5
    assert w.app.fencing.waits_total == 0


async def test_stop_order_handoff(world: tuple[World, FakeAgents]) -> None:
    """The router cannot reach node-2, its agent still reaches Redis: the sessions move
    after the agent stopped them, and never run twice."""
    w, agents = world
    lost = await lost_sessions(w)
    agents.agents["node-2"] = FakeAgent(renewed=w.clock.now())
    running = dict(w.fakes["node-2"].sessions)
    w.fakes["node-2"].crash()  # unreachable for the router...
    w.fakes["node-2"].sessions.update(running)  # ...but still running them (a partition)
    await w.clock.run_until(lambda: not any(on(w, [s], "node-2") for s in lost), limit=15)
    assert sorted(agents.agents["node-2"].stops) == sorted(lost)
    assert w.app.fencing.waits_total == 1
    assert "node-2" not in agents.orders  # withdrawn once decided
    kinds = [e.kind for e in w.app.events.recent(200)]
    assert "fence_ordered" in kinds and "fence_handoff" in kinds
    for s in lost:
        assert w.fakes.where(s) != ["node-2"]


async def test_cut_off_agent_moves_only_after_lease_lapsed(
    world: tuple[World, FakeAgents],
) -> None:
    """The whole side is cut off: no ack comes; sessions move only once the lease has been
    expired for fence_after + margin (8 s after the agent's last renewal)."""
    w, agents = world
    lost = await lost_sessions(w)
    cut = w.clock.now()
    agents.agents["node-2"] = FakeAgent(renewed=cut, renewing=False)
    w.fakes["node-2"].crash()
    await w.clock.run_until(lambda: not any(on(w, [s], "node-2") for s in lost), limit=20)
    assert w.clock.now() - cut >= 8.0
    kinds = [e.kind for e in w.app.events.recent(200)]
    assert "fence_lapsed" in kinds and "fence_handoff" not in kinds


async def test_agent_holding_lease_without_ack_blocks_the_move(
    world: tuple[World, FakeAgents],
) -> None:
    """An agent that renews but cannot stop its sessions: nothing moves (two live copies
    would be worse than the outage)."""
    w, agents = world
    lost = await lost_sessions(w)
    agents.agents["node-2"] = FakeAgent(renewed=w.clock.now(), obeys=False)
    w.fakes["node-2"].crash()
    await w.clock.advance(30.0)
    assert on(w, lost, "node-2")
    assert w.app.fencing.agent_up.get("node-2") is True
    # ... but an operator is told, once, and the sessions move as soon as the agent acks
    await w.clock.advance(20.0)
    kinds = [e.kind for e in w.app.events.recent(500)]
    assert kinds.count("fence_stuck") == 1
    assert on(w, lost, "node-2")
    agents.agents["node-2"].obeys = True
    agents.acks["node-2"] = agents.orders["node-2"]
    await w.clock.run_until(lambda: not any(on(w, [s], "node-2") for s in lost), limit=5)
