"""Component layer: the whole app from ``create_app`` with the memory store, in-process fake
instances behind the control-plane transport and a manual clock. Failover, holding, drain,
rebalance and reload run here in milliseconds; tests/test_failover.py and
tests/test_operate.py prove the same with real processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import pytest

from router.app import App, create_app
from router.config import parse_config
from router.config.holder import ConfigHolder
from router.config.model import Config
from router.errors import Conflict, SessionMoving
from router.instances import Instance
from router.moves import Move
from router.stats import NullStats
from router.transport import HttpTransport
from tests.fakes import FakeInstances, ManualClock
from tests.procs import free_port

pytestmark = pytest.mark.component

NAMES = ("node-1", "node-2", "node-3")
ADMIN_TOKEN = "component-admin-token"


def config_text(fakes: FakeInstances, ports: tuple[int, int], names: tuple[str, ...] = NAMES,
                extra: str = "") -> str:
    lines = [f"listen: {{host: 127.0.0.1, port: {ports[0]}}}",
             f"admin: {{host: 127.0.0.1, port: {ports[1]}, token: {ADMIN_TOKEN}}}", "instances:"]
    lines += [f"  - {{name: {n}, url: '{fakes.url(n)}'}}" for n in names]
    return "\n".join(lines) + "\n" + extra


@dataclass
class World:
    app: App
    clock: ManualClock
    fakes: FakeInstances
    ports: tuple[int, int]

    def config(self, names: tuple[str, ...] = NAMES, extra: str = "") -> Config:
        """A config for this world (same ports: a reload may not change them)."""
        return parse_config(config_text(self.fakes, self.ports, names, extra))

    async def place(self, sessions: list[str]) -> dict[str, str]:
        """Place sessions as first requests would, running them where they were placed."""
        where: dict[str, str] = {}
        for s in sessions:
            a = await self.app.router.assign(s)
            self.fakes[a.instance].run(s)
            where[s] = a.instance
        return where

    def settled(self, sessions: list[str]) -> bool:
        store = self.app.store
        return all((a := store.cached(s)) is not None and not a.moving for s in sessions)


async def make_world(names: tuple[str, ...] = NAMES,
                     extra: str | Callable[[FakeInstances], str] = "") -> World:
    """The app on fake instances node-1..3 (node-4 exists too, outside the config: a spare,
    or a webhook receiver); ``extra`` config text may depend on the fakes' URLs."""
    clock = ManualClock()
    fakes = FakeInstances(clock, ["node-1", "node-2", "node-3", "node-4"])
    if callable(extra):
        extra = extra(fakes)
    ports = (free_port(), free_port())
    app = create_app(parse_config(config_text(fakes, ports, names, extra)), transport=fakes,
                     clock=clock)
    await app.start()
    await clock.run_until(lambda: app.leadership.is_leader, limit=5)
    return World(app, clock, fakes, ports)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = await make_world()
    yield w
    await w.app.stop()


async def test_failover_moves_each_session_once_and_only_after_grace(world: World) -> None:
    sessions = [f"s{i}" for i in range(30)]
    where = await world.place(sessions)
    lost = [s for s, i in where.items() if i == "node-2"]
    assert lost
    world.fakes["node-2"].crash()
    # Down after 2 failed probes (1 s apart), moved after failover.grace (5 s).
    down = await world.clock.run_until(lambda: not world.app.fleet.by_name["node-2"].healthy, limit=5)
    assert down <= 2.5
    await world.clock.advance(4.0)
    assert all(world.app.store.cached(s).instance == "node-2" for s in lost)  # type: ignore[union-attr]
    took = await world.clock.run_until(
        lambda: world.settled(sessions) and all(world.fakes.where(s) for s in lost), limit=30)
    for s in lost:
        a = world.app.store.cached(s)
        assert a is not None and a.instance != "node-2"
        assert world.fakes.where(s) == [a.instance]  # WORKING on exactly its new instance
    starts = sum(world.fakes[n].count("POST", "/api/sessions/") for n in ("node-1", "node-3"))
    assert starts == len(lost)  # one start per moved session, none for the others
    kinds = [e.kind for e in world.app.events.recent(100)]
    assert "failover_started" in kinds and "failover_finished" in kinds
    assert world.app.mover.moves_total == {"failover": len(lost)}
    print(f"\ncomponent failover: {len(lost)} sessions moved {took:.1f}s (clock) after grace")


async def test_an_instance_back_within_grace_keeps_its_sessions(world: World) -> None:
    where = await world.place([f"s{i}" for i in range(12)])
    world.fakes["node-2"].up = False
    await world.clock.run_until(lambda: not world.app.fleet.by_name["node-2"].healthy, limit=5)
    await world.clock.advance(2.0)
    world.fakes["node-2"].up = True
    await world.clock.run_until(lambda: world.app.fleet.by_name["node-2"].healthy, limit=5)
    await world.clock.advance(10.0)
    assert {s: world.app.store.cached(s).instance for s in where} == where  # type: ignore[union-attr]
    assert world.app.mover.moves_total == {}
    assert not any(world.fakes[n].count("POST", "/api/sessions/") for n in NAMES)


async def start_move(world: World, session: str, start_delay: float
                     ) -> tuple[str, str, asyncio.Future[bool], asyncio.Future[Instance]]:
    """Place ``session``, start an operator move to another instance whose sessions take
    ``start_delay`` to start, and a request for it: (old, new, the move, the request)."""
    await world.place([session])
    a = world.app.store.cached(session)
    assert a is not None
    target = next(n for n in NAMES if n != a.instance)
    world.fakes[target].start_delay = start_delay
    move = asyncio.ensure_future(world.app.mover.move(
        Move(session, "manual", source=a.instance, target=target, stop_old=True, manual=True)))
    await world.clock.advance(0.05)
    held = asyncio.ensure_future(world.app.router.routable(session, world.clock.now() + 15))
    return a.instance, target, move, held


async def test_requests_are_held_while_moving_and_released_on_the_new_instance(world: World) -> None:
    old, target, move, held = await start_move(world, "held", 3.0)
    await world.clock.advance(1.0)
    assert not held.done() and world.app.router.held == 1
    await world.clock.run_until(held.done, limit=10)
    assert held.result().name == target and world.app.router.held == 0
    assert await move is True
    assert world.fakes[old].count("POST", "/api/sessions/held/stop") == 1


async def test_a_held_request_gets_session_moving_at_its_deadline(world: World) -> None:
    _, _, move, held = await start_move(world, "slow", 60.0)
    await world.clock.run_until(held.done, limit=16)
    with pytest.raises(SessionMoving):
        held.result()
    assert world.app.router.held == 0
    move.cancel()


async def test_drain_moves_every_session_a_few_at_a_time_and_stops_old_copies(world: World) -> None:
    where = await world.place([f"d{i}" for i in range(40)])
    on_1 = [s for s, i in where.items() if i == "node-1"]
    assert len(on_1) > 8
    await world.app.drainer.drain("node-1")
    most_moving = 0

    def empty() -> bool:
        nonlocal most_moving
        moving = sum(1 for s in where if (a := world.app.store.cached(s)) is not None and a.moving)
        most_moving = max(most_moving, moving)
        return world.app.drainer.sessions("node-1") == 0 and world.settled(on_1)

    await world.clock.run_until(empty, limit=60)
    # At most restore_concurrency sessions held at once: the rest kept serving meanwhile.
    assert 1 <= most_moving <= world.app.config.current.failover.restore_concurrency
    for s in on_1:
        assert world.fakes.where(s) == [world.app.store.cached(s).instance]  # type: ignore[union-attr]
    old = world.fakes["node-1"]
    assert old.count("POST", "/api/sessions/") == len(on_1)  # one stop each
    assert all(m != "DELETE" for m, _ in old.calls)  # stop, never delete
    assert await world.app.drainer.wait_empty("node-1", 0.1)
    # No new session goes to a drained instance.
    assert (await world.app.router.assign("new-after-drain")).instance != "node-1"


async def test_reload_adds_an_instance_and_rebalance_fills_it() -> None:
    w = await make_world(names=("node-1", "node-2"))
    try:
        sessions = [f"r{i}" for i in range(30)]
        await w.place(sessions)
        await w.app.reload(w.config(NAMES))
        assert "node-3" in w.app.fleet.by_name
        await w.clock.run_until(lambda: w.fakes["node-3"].count("GET", "/ping") > 0, limit=3)
        plan = await w.app.drainer.plan()
        assert plan and all(to == "node-3" for _, _, to in plan)
        await w.app.drainer.rebalance()
        await w.clock.run_until(lambda: not w.app.drainer.rebalancing and w.settled(sessions), limit=60)
        counts = w.app.store.counts()
        bound = -(-len(sessions) * 1.25 // 3)
        assert counts["node-3"] == len(plan) and max(counts.values()) <= bound
        assert await w.app.drainer.plan() == []  # converged
    finally:
        await w.app.stop()


def _everything_changed(world: World) -> Config:
    return world.config(extra="""
profile: generic
placement: {balance_factor: 1.5}
sessions: {rules: [{header: X-Tenant}], unscoped: reject}
health: {path: /healthz-2, interval: 2s, timeout: 300ms, unhealthy_threshold: 3, healthy_threshold: 1}
passive: {consecutive_failures: 7, statuses: [500], ejection_time: 3s, max_ejection_percent: 20}
failover:
  grace: 9s
  hold_timeout: 4s
  restore_concurrency: 2
  restore: {method: POST, path: '/api/sessions/{session}/restart'}
  leader_ttl: 2s
  max_held_requests: 7
limits: {upstream_connect_timeout: 700ms, upstream_timeout: 5s}
alerts: {webhooks: ['http://127.0.0.1:9/alert'], webhook_backlog_threshold: 5}
metrics: {enabled: false}
log: {level: WARNING}
""")


class ReadsTheHolder(Protocol):
    """A component as the reload test sees it: it keeps the app's one ConfigHolder."""

    @property
    def _config(self) -> ConfigHolder: ...


async def test_a_reload_reaches_every_component(world: World) -> None:
    new = _everything_changed(world)
    await world.app.reload(new)
    app = world.app
    assert app.config.current is new
    # Every component reads the one holder: none keeps a config of its own.
    parts: tuple[ReadsTheHolder, ...] = (app.router, app.placer, app.mover, app.monitor,
                                          app.leadership, app.drainer, app.alerter, app.api)
    for part in parts:
        assert part._config is app.config, part
    # And each sees the new values where it uses them.
    assert app.router.extractor.extract("GET", "/x", "", {"x-tenant": "t1"}, None) == "t1"
    assert app.router.max_held == 7 and app.router.passive_statuses == frozenset({500})
    assert isinstance(app.router.own_stats, NullStats)
    assert app.leadership.ttl == 2.0
    assert app.alerter.config.webhook_backlog_threshold == 5
    probes = world.fakes["node-1"].count("GET", "/healthz-2")
    await world.clock.advance(2.5)
    assert world.fakes["node-1"].count("GET", "/healthz-2") > probes
    await world.place(["after-reload"])
    a = app.store.cached("after-reload")
    assert a is not None
    target = next(n for n in NAMES if n != a.instance)
    moved = asyncio.ensure_future(app.mover.move(Move("after-reload", "manual", source=a.instance,
                                                      target=target, manual=True)))
    await world.clock.run_until(moved.done, limit=10)
    assert world.fakes[target].count("POST", "/api/sessions/after-reload/restart") == 1


async def test_a_reload_reaches_the_real_transports_connect_timeout(world: World) -> None:
    """The production transport reads the connect timeout from the holder at each connect
    (it once kept the start-up value: the health monitor and instance API did)."""
    app = create_app(world.config())  # not started: a reload needs nothing running
    assert isinstance(app.transport, HttpTransport)
    before = app.transport._connect_timeout()
    await app.reload(_everything_changed(world))
    assert before == 2.0 and app.transport._connect_timeout() == pytest.approx(0.7)


# -- no stop call (failover.stop: none, as Evolution API) -------------------------------------


async def test_without_a_stop_call_sessions_leave_only_an_instance_that_is_down() -> None:
    """Drain is a cordon, rebalance and live moves are refused; once the drained instance
    is down its sessions fail over as usual; one that comes back running them is alerted
    (stale_copy), never stopped, logged out or deleted."""
    w = await make_world(extra="failover: {stop: none, grace: 1s}\n")
    try:
        where = await w.place([f"n{i}" for i in range(30)])
        on_1 = [s for s, i in where.items() if i == "node-1"]
        assert on_1
        await w.app.drainer.drain("node-1")
        await w.clock.advance(5)  # several drainer passes
        assert w.app.drainer.sessions("node-1") == len(on_1)  # cordoned, nothing moved
        assert (await w.app.router.assign("new-after-drain")).instance != "node-1"
        assert w.app.mover.pinned("node-1")
        assert not await w.app.mover.move(Move(on_1[0], "manual", target="node-2", stop_old=True,
                                               manual=True))
        with pytest.raises(Conflict):
            await w.app.drainer.rebalance()
        old = w.fakes["node-1"]
        old.crash()  # the operator stops it; its copies end with it
        await w.clock.run_until(lambda: w.app.drainer.sessions("node-1") == 0 and w.settled(on_1),
                                limit=30)
        for s in on_1:
            assert w.fakes.where(s) == [w.app.store.cached(s).instance]  # type: ignore[union-attr]
        # Back, still running the old copies (as Evolution API reconnects them at boot).
        old.restart()
        for s in on_1:
            old.run(s)
        await w.clock.run_until(lambda: bool(w.app.events.recent(kind="stale_copy")), limit=10)
        (alert,) = w.app.events.recent(kind="stale_copy")
        assert alert.severity == "critical" and set(alert.data["sessions"]) == set(on_1)
        assert not any(p.startswith("/api/sessions/") and (m == "DELETE" or p.endswith(("/stop", "/logout")))
                       for m, p in old.calls)
    finally:
        await w.app.stop()
