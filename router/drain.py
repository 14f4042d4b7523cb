"""Drain, undrain, removal of instances, and rebalance: sessions moved on purpose.

A drained instance takes no new session and its sessions move elsewhere, at most
``failover.restore_concurrency`` at a time, each one held, stopped on the old instance and
restored on the new one (``Failover.move(stop_old=True)``): no request fails, none reaches
a half-moved session. Operator drains live in the store (``set_drained``), so every router
process and replica places nothing there; each one re-reads the flags every second. An
instance a reload removed is drained the same way and dropped once it holds no session.

Only the leader moves sessions for drains (one mover, like failover); every process drops a
removed instance once the map shows it empty. A rebalance is an operator's request: the
process asked plans it (``placement.plan_rebalance``) and executes it, throttled, each move
fenced by its epoch like an admin move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from router.errors import Conflict, NotFound, StoreUnavailable
from router.events import EventLog
from router.failover import Failover
from router.instances import Instance
from router.placement import plan_rebalance
from router.routing import Router
from router.tasks import cancel_and_wait

log = logging.getLogger("wa_router.drain")

SYNC_INTERVAL = 1.0
RETRY_PAUSE = 5.0  # after a drain pass that moved nothing


class Drainer:
    def __init__(
        self,
        router: Router,
        failover: Failover,
        events: EventLog,
        is_leader: Callable[[], bool],
        *,
        on_dropped: Callable[[Instance], None] = lambda inst: None,
    ) -> None:
        self.router = router
        self.failover = failover
        self.events = events
        self.is_leader = is_leader
        self._on_dropped = on_dropped
        self._draining: dict[str, asyncio.Task[None]] = {}  # instance -> its mover task
        self._rebalance: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drainer")

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait([self._task, self._rebalance, *self._draining.values()])
        self._draining.clear()

    def kick(self) -> None:
        """Look again now (a drain, undrain or reload just happened)."""
        self._wake.set()

    # -- operator calls --------------------------------------------------------------------

    def _instance(self, name: str) -> Instance:
        inst = self.router.fleet.get(name)
        if inst is None:
            raise NotFound(f"unknown instance {name!r}")
        return inst

    async def drain(self, name: str) -> Instance:
        inst = self._instance(name)
        await self.router.store.set_drained(name, True)  # StoreUnavailable: 503, nothing changed
        if not inst.drained:
            inst.set_flags(drained=True)
            self.events.emit("instance_drained", f"instance {name} drained: its sessions move away",
                             instance=name, data={"sessions": self.sessions(name)})
        self.kick()
        return inst

    async def undrain(self, name: str) -> Instance:
        inst = self._instance(name)
        await self.router.store.set_drained(name, False)
        if inst.drained:
            inst.set_flags(drained=False)
            self.events.emit("instance_undrained", f"instance {name} takes new sessions again",
                             instance=name)
        self.kick()
        return inst

    def sessions(self, name: str) -> int:
        return self.router.store.counts().get(name, 0)

    async def wait_empty(self, name: str, timeout: float) -> bool:
        """True once the instance holds no session (or is gone), False at ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions(name) > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self.router.changed.wait(min(remaining, 0.5))
        return True

    async def plan(self) -> list[tuple[str, str, str]]:
        """(session, from, to) moves that bring every available instance within the bound."""
        router = self.router
        eligible = frozenset(i.name for i in router.fleet if i.available)
        everything = await router.store.list()
        # Sessions moving right now count where they are going, but are not moved again.
        moving = frozenset(a.session for a in everything if a.moving)
        return plan_rebalance({a.session: a.instance for a in everything}, router.fleet.ring,
                              eligible, router.config.placement.balance_factor, pinned=moving)

    @property
    def rebalancing(self) -> bool:
        return self._rebalance is not None and not self._rebalance.done()

    async def rebalance(self) -> list[tuple[str, str, str]]:
        """Plan, and execute in the background (throttled); one rebalance at a time
        (``Conflict`` while one runs)."""
        if self.rebalancing:
            raise Conflict("a rebalance is already running")
        moves = await self.plan()
        if moves:
            self.events.emit("rebalance_started", f"rebalance: {len(moves)} session moves",
                             data={"moves": len(moves)})
            self._rebalance = asyncio.get_running_loop().create_task(self._execute(moves))
        return moves

    async def _execute(self, moves: list[tuple[str, str, str]]) -> None:
        sem = asyncio.Semaphore(self.router.config.failover.restore_concurrency)
        store = self.router.store

        async def one(session: str, source: str, target: str) -> bool:
            async with sem:
                a = store.cached(session)
                dest = self.router.fleet.get(target)
                if a is None or a.moving or a.instance != source or dest is None or not dest.available:
                    return False  # changed since the plan: skip it
                return await self.failover.move(a, reason="rebalance", target=target,
                                                stop_old=True, manual=True)

        results = await asyncio.gather(*(one(*m) for m in moves), return_exceptions=True)
        done = sum(1 for r in results if r is True)
        self.events.emit("rebalance_finished", f"rebalance: {done} of {len(moves)} sessions moved",
                         data={"moved": done, "planned": len(moves)})

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._sync()
                self._act()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("drainer: pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_INTERVAL)

    async def _sync(self) -> None:
        """Operator drains made through any router."""
        try:
            drained = await self.router.store.drained()
        except StoreUnavailable:
            return  # keep the flags we have
        for inst in self.router.fleet:
            if inst.drained != (inst.name in drained):
                inst.set_flags(drained=inst.name in drained)

    def _act(self) -> None:
        loop = asyncio.get_running_loop()
        for inst in list(self.router.fleet):
            task = self._draining.get(inst.name)
            if task is not None and task.done():
                del self._draining[inst.name]
                task = None
            if not inst.draining:
                continue
            if self.sessions(inst.name) == 0:
                if inst.removing and task is None:
                    self._drop(inst)
                continue
            if task is None and self.is_leader():
                self._draining[inst.name] = loop.create_task(self._move_all(inst))

    def _drop(self, inst: Instance) -> None:
        self.router.fleet.drop(inst.name)
        self._on_dropped(inst)
        self.router.changed.fire()
        self.events.emit("instance_removed", f"instance {inst.name} removed (config reload)",
                         instance=inst.name)

    async def _move_all(self, inst: Instance) -> None:
        """One pass over the instance's sessions; the loop starts another while some remain."""
        reason = "remove" if inst.removing else "drain"
        sem = asyncio.Semaphore(self.router.config.failover.restore_concurrency)
        sessions = [a for a in await self.router.store.list(inst.name) if not a.moving]

        async def one(session: str) -> Any:
            async with sem:
                # Re-read: a failover or another move may have taken it meanwhile.
                a = self.router.store.cached(session)
                if a is None or a.moving or a.instance != inst.name or not inst.draining:
                    return False
                return await self.failover.move(a, reason=reason, stop_old=True)

        results = await asyncio.gather(*(one(a.session) for a in sessions), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.warning("drain of %s: a move failed: %r", inst.name, r)
        if sessions and not any(r is True for r in results):
            # Nothing could move (no room, targets failing): try again later, not in a loop.
            await asyncio.sleep(RETRY_PAUSE)
        self.kick()
