"""Drain, undrain, removal of instances, and rebalance: sessions moved on purpose.

A drained instance takes no new session and its sessions move elsewhere, at most
``failover.restore_concurrency`` at a time, each one held, stopped on the old instance and
restored on the new one (``Failover.move(stop_old=True)``): no request fails, none reaches
a half-moved session. Without a stop call (``failover.stop: none``, Evolution API) a drain
is a cordon: the sessions move by failover once the operator stops the instance. Operator
drains live in the store (``set_drained``), so every router process and replica places
nothing there; each one re-reads the flags every second. An
instance a reload removed is drained the same way and dropped once it holds no session.

Only the leader moves sessions for drains (one mover, like failover); every process drops a
removed instance once the map shows it empty. A rebalance is an operator's request: the
process asked plans it (``placement.plan_rebalance``) and executes it, throttled, each move
fenced by its epoch like an admin move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import Conflict, NotFound, StoreUnavailable
from router.events import EventLog
from router.instances import Fleet, Instance
from router.moves import Move, Mover
from router.placement import plan_rebalance
from router.pulse import Pulse
from router.store.base import Assignments, DrainFlags
from router.tasks import Tasks

log = logging.getLogger("wa_router.drain")

SYNC_INTERVAL = 1.0
RETRY_PAUSE = 5.0  # after a drain pass that moved nothing


class DrainStore(Assignments, DrainFlags, Protocol):
    """What draining needs of the store: the map, and the drain flags shared by routers."""


class Drainer:
    def __init__(
        self,
        config: ConfigHolder,
        store: DrainStore,
        fleet: Fleet,
        mover: Mover,
        events: EventLog,
        changed: Pulse,
        clock: Clock,
        is_leader: Callable[[], bool],
        *,
        on_dropped: Callable[[Instance], None] = lambda inst: None,
    ) -> None:
        self._config = config
        self.store = store
        self.fleet = fleet
        self.mover = mover
        self.events = events
        self._changed = changed
        self._clock = clock
        self.is_leader = is_leader
        self._on_dropped = on_dropped
        self.tasks = Tasks("drainer")
        self._wake = Pulse(clock)

    def __repr__(self) -> str:
        draining = [i.name for i in self.fleet if i.draining]
        return f"<Drainer draining={draining} rebalancing={self.rebalancing}>"

    def start(self) -> None:
        self.tasks.spawn(self._run(), name="drainer")

    async def stop(self) -> None:
        await self.tasks.stop()

    def kick(self) -> None:
        """Look again now (a drain, undrain or reload just happened)."""
        self._wake.fire()

    # -- operator calls --------------------------------------------------------------------

    def _instance(self, name: str) -> Instance:
        inst = self.fleet.get(name)
        if inst is None:
            raise NotFound(f"unknown instance {name!r}")
        return inst

    async def drain(self, name: str) -> Instance:
        inst = self._instance(name)
        await self.store.set_drained(name, True)  # StoreUnavailable: 503, nothing changed
        if not inst.drained:
            inst.set_flags(drained=True)
            how = ("its sessions move away" if self.mover.api.can_stop else
                   "failover.stop is none, so its sessions move once it is stopped")
            self.events.emit("instance_drained", f"instance {name} drained: {how}",
                             instance=name, data={"sessions": self.sessions(name)})
        self.kick()
        return inst

    async def undrain(self, name: str) -> Instance:
        inst = self._instance(name)
        await self.store.set_drained(name, False)
        if inst.drained:
            inst.set_flags(drained=False)
            self.events.emit("instance_undrained", f"instance {name} takes new sessions again",
                             instance=name)
        self.kick()
        return inst

    def sessions(self, name: str) -> int:
        return self.store.counts().get(name, 0)

    async def wait_empty(self, name: str, timeout: float) -> bool:
        """True once the instance holds no session (or is gone), False at ``timeout``."""
        deadline = self._clock.now() + timeout
        while self.sessions(name) > 0:
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                return False
            await self._changed.wait(min(remaining, 0.5))
        return True

    async def plan(self) -> list[tuple[str, str, str]]:
        """(session, from, to) moves that bring every available instance within the bound."""
        eligible = frozenset(i.name for i in self.fleet if i.available)
        everything = await self.store.list()
        # Sessions moving right now count where they are going, but are not moved again.
        moving = frozenset(a.session for a in everything if a.moving)
        return plan_rebalance({a.session: a.instance for a in everything}, self.fleet.ring,
                              eligible, self._config.current.placement.balance_factor, pinned=moving)

    @property
    def rebalancing(self) -> bool:
        return self.tasks.running("rebalance")

    async def rebalance(self) -> list[tuple[str, str, str]]:
        """Plan, and execute in the background (throttled); one rebalance at a time
        (``Conflict`` while one runs)."""
        if self.rebalancing:
            raise Conflict("a rebalance is already running")
        if not self.mover.api.can_stop:
            raise Conflict("failover.stop is none (e.g. Evolution API): a session cannot leave "
                           "an instance that runs it, so there is nothing to rebalance")
        moves = await self.plan()
        if moves:
            self.events.emit("rebalance_started", f"rebalance: {len(moves)} session moves",
                             data={"moves": len(moves)})
            self.tasks.spawn(self._execute(moves), key="rebalance")
        return moves

    async def _execute(self, moves: list[tuple[str, str, str]]) -> None:
        done = await self.mover.move_many(
            (Move(session, "rebalance", source=source, target=target, stop_old=True,
                  manual=True, planned=True) for session, source, target in moves),
            window=self._config.current.failover.restore_concurrency,
        )
        self.events.emit("rebalance_finished", f"rebalance: {done} of {len(moves)} sessions moved",
                         data={"moved": done, "planned": len(moves)})

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._sync()
                self._act()
            except Exception:
                log.exception("drainer: pass failed")
            await self._wake.wait(SYNC_INTERVAL)

    async def _sync(self) -> None:
        """Operator drains made through any router."""
        try:
            drained = await self.store.drained()
        except StoreUnavailable:
            return  # keep the flags we have
        for inst in self.fleet:
            if inst.drained != (inst.name in drained):
                inst.set_flags(drained=inst.name in drained)

    def _act(self) -> None:
        for inst in list(self.fleet):
            key = ("drain", inst.name)
            busy = self.tasks.running(key)
            if not inst.draining:
                continue
            if self.sessions(inst.name) == 0:
                if inst.removing and not busy:
                    self._drop(inst)
                continue
            # Without a stop call a drain is a cordon: the sessions leave by failover (grace,
            # fencing) once the operator stops the instance.
            if not busy and self.is_leader() and self.mover.api.can_stop:
                self.tasks.spawn(self._move_all(inst), key=key)

    def _drop(self, inst: Instance) -> None:
        self.fleet.drop(inst.name)
        self._on_dropped(inst)
        self._changed.fire()
        self.events.emit("instance_removed", f"instance {inst.name} removed (config reload)",
                         instance=inst.name)

    async def _move_all(self, inst: Instance) -> None:
        """One pass over the instance's sessions; the loop starts another while some remain."""
        reason = "remove" if inst.removing else "drain"
        sessions = [a for a in await self.store.list(inst.name) if not a.moving]
        moved = await self.mover.move_many(
            (Move(a.session, reason, source=inst.name, stop_old=True, planned=True,
                  still=lambda: inst.draining) for a in sessions),
            window=self._config.current.failover.restore_concurrency,
        )
        if sessions and not moved:
            # Nothing could move (no room, targets failing): try again later, not in a loop.
            await self._clock.sleep(RETRY_PAUSE)
        self.kick()
