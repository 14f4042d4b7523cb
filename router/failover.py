"""Failover, session restore, stale-copy stops and rediscovery.

Only the leader acts (with one router process, it is always the leader). Every action is
fenced: a restore or stop is only sent while the map still holds the epoch it was decided
for, and while this router still holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from router import backoff
from router.config.model import Config
from router.errors import RouterError, UpstreamError
from router.events import EventLog
from router.instance_api import InstanceApi, call_path
from router.instances import Instance
from router.routing import Router
from router.store.base import Assignment, StaleEpoch

log = logging.getLogger("wa_router.failover")

NOT_RUNNING = frozenset({"STOPPED", "FAILED"})


def restore_delay(attempt: int) -> float:
    """Pause after failed restore attempt ``attempt``: 1 s doubling to 30 s, +-20%."""
    return backoff.delay(attempt, base=1.0, cap=30.0, jitter=0.2, rand=random.random())


class Failover:
    def __init__(
        self,
        config: Config,
        router: Router,
        api: InstanceApi,
        events: EventLog,
        is_leader: Callable[[], bool],
    ) -> None:
        self.config = config
        self.router = router
        self.store = router.store
        self.api = api
        self.events = events
        self.is_leader = is_leader
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._restoring: set[tuple[str, int]] = set()
        self._manual: set[tuple[str, int]] = set()  # operator moves in progress here
        self._suspects: dict[str, float] = {}
        self.moves_total: dict[str, int] = {}
        self.failovers_total: dict[str, int] = {}
        self.restore_failures = 0

    # -- task bookkeeping ----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, object]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RouterError as e:
            log.warning("failover task: %s", e.message)
        except Exception:
            log.exception("failover task failed")

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def reconfigure(self, config: Config) -> None:
        if config.failover.restore_concurrency != self.config.failover.restore_concurrency:
            self._sems = {}  # new limits for new restores; running ones finish under the old
        self.config = config

    def _sem(self, instance: str) -> asyncio.Semaphore:
        sem = self._sems.get(instance)
        if sem is None:
            sem = self._sems[instance] = asyncio.Semaphore(self.config.failover.restore_concurrency)
        return sem

    # -- triggers (from the health monitor and the leader lease) ------------------------

    def instance_failed(self, inst: Instance) -> None:
        """An instance stayed down past ``failover.grace``."""
        if self.is_leader():
            self._spawn(self.fail_over(inst))

    def instance_up(self, inst: Instance) -> None:
        if self.is_leader():
            self._spawn(self.rediscover(inst))

    def became_leader(self) -> None:
        """Finish what a previous leader left: sessions still moving, instances still down."""
        self._spawn(self._resume())

    async def _resume(self) -> None:
        for a in await self.store.list():
            if a.moving:
                self._spawn(self._restore(a))
        # Spawned, not awaited: one instance's failover (restores can take minutes) must
        # not delay another's, nor the rediscovery of the healthy instances.
        for inst in self.router.fleet:
            if inst.health.failed_over and not inst.healthy:
                self._spawn(self.fail_over(inst))
            elif inst.healthy:
                self._spawn(self.rediscover(inst))

    # -- failover ------------------------------------------------------------------------

    async def fail_over(self, inst: Instance) -> None:
        sessions = [a for a in await self.store.list(inst.name)]
        if not sessions:
            return
        self.failovers_total[inst.name] = self.failovers_total.get(inst.name, 0) + 1
        self.events.emit(
            "failover_started",
            f"instance {inst.name} down past grace: moving {len(sessions)} sessions",
            instance=inst.name, severity="critical", data={"sessions": len(sessions)},
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(self.move(a, reason="failover") for a in sessions), return_exceptions=True
        )
        failed = sum(1 for r in results if r is not True)
        self.events.emit(
            "failover_finished",
            f"instance {inst.name}: {len(sessions) - failed} sessions moved, {failed} failed, "
            f"in {loop.time() - started:.1f}s",
            instance=inst.name, severity="warning" if failed else "info",
            data={"moved": len(sessions) - failed, "failed": failed},
        )

    def _choose_target(self, session: str, exclude: str) -> str | None:
        eligible = frozenset(i.name for i in self.router.fleet if i.available and i.name != exclude)
        return self.router.fleet.ring.place(
            session, self.store.counts(), eligible, self.config.placement.balance_factor
        )

    async def move(self, a: Assignment, *, reason: str, target: str | None = None,
                   stop_old: bool = False, manual: bool = False) -> bool:
        """Reassign one session (new epoch, marked moving, so every router holds its
        requests), stop the old copy if asked, and restore it on its target.

        ``manual``: an operator's move, made by whichever router was asked (the epoch
        compare-and-set fences it); failover moves are the leader's alone."""
        if not manual and not self.is_leader():
            return False
        # Choosing a target and writing the move are one step, one move at a time: the
        # choice reads the local counts, which include a move only once its write has
        # returned (with Redis, a round trip later). A whole instance's sessions moved
        # concurrently would otherwise all be placed against the same counts, past the
        # balance bound and past max_sessions. Only this short step is serialized.
        async with self.router.placement_lock:
            if not manual and not self.is_leader():
                return False
            chosen = target or self._choose_target(a.session, a.instance)
            if chosen is None:
                return self._no_room(a.session)
            try:
                moved = await self.store.move(a.session, chosen, a.epoch, moving=True)
            except StaleEpoch:
                return False  # someone else moved it meanwhile: their move wins
        if manual:
            self._manual.add((moved.session, moved.epoch))
        self.moves_total[reason] = self.moves_total.get(reason, 0) + 1
        self.router.changed.fire()
        try:
            if stop_old:
                # Requests are held from here on: the old copy can stop without losing any.
                old = self.router.fleet.get(a.instance)
                if old is not None:
                    await self._stop_copy(old, a.session, a.epoch)
            return await self._restore(moved)
        finally:
            self._manual.discard((moved.session, moved.epoch))

    def _no_room(self, session: str) -> bool:
        self.events.emit("restore_failed", f"no instance has room for session {session}",
                         session=session, severity="critical")
        return False

    async def _restore(self, a: Assignment) -> bool:
        key = (a.session, a.epoch)
        if key in self._restoring:
            return False
        self._restoring.add(key)
        try:
            return await self._restore_attempts(a)
        finally:
            self._restoring.discard(key)

    def _fenced(self, a: Assignment) -> bool:
        """Still ours to act on: same epoch in the map, and we still lead (or an operator
        asked this router for this very move)."""
        current = self.store.cached(a.session)
        return (current is not None and current.epoch == a.epoch
                and (self.is_leader() or (a.session, a.epoch) in self._manual))

    async def _restore_attempts(self, a: Assignment) -> bool:
        fo = self.config.failover
        target = self.router.fleet.get(a.instance)
        if target is None:
            return False
        if a.moving and await self._status(target, a.session) in fo.status.ready:
            # Already running there (a previous leader restored it): just settle.
            await self.store.settle(a.session, a.epoch)
            self.router.changed.fire()
            return True
        for attempt in range(1, fo.restore_attempts + 1):
            async with self._sem(a.instance):
                if not self._fenced(a):
                    return False
                if await self._start_and_wait(target, a):
                    settled = await self.store.settle(a.session, a.epoch)
                    self.router.changed.fire()
                    if settled is not None:
                        self.events.emit("session_moved", f"session {a.session} ready on {target.name}",
                                         session=a.session, instance=target.name)
                    return True
            if attempt < fo.restore_attempts:
                await asyncio.sleep(restore_delay(attempt))
        self.restore_failures += 1
        self.events.emit(
            "restore_failed",
            f"session {a.session} could not be restored on {target.name} after {fo.restore_attempts} attempts",
            session=a.session, instance=target.name, severity="critical",
        )
        # Release held requests: they get the instance's own answer instead of waiting.
        await self.store.settle(a.session, a.epoch)
        self.router.changed.fire()
        return False

    async def _start_and_wait(self, target: Instance, a: Assignment) -> bool:
        fo = self.config.failover
        loop = asyncio.get_running_loop()
        deadline = loop.time() + fo.restore_timeout
        timeout = self.config.limits.upstream_timeout
        try:
            resp = await self.api.request(
                target, fo.restore.method, call_path(fo.restore.path, a.session),
                timeout=min(timeout, fo.restore_timeout),
            )
        except UpstreamError as e:
            log.warning("restore of %s on %s: %s", a.session, target.name, e.message)
            return False
        if resp.status >= 400 and resp.status != 422:
            log.warning("restore of %s on %s answered %d", a.session, target.name, resp.status)
            return False
        poll = 0.1
        while loop.time() < deadline:
            if not self._fenced(a):
                return False
            status = await self._status(target, a.session)
            if status in fo.status.ready:
                return True
            if status == "FAILED":
                return False
            await asyncio.sleep(poll)
            poll = min(poll * 1.5, 0.25)  # status GETs are cheap; readiness latency is not
        return False

    async def _status(self, inst: Instance, session: str) -> str | None:
        fo = self.config.failover
        try:
            resp = await self.api.request(
                inst, fo.status.method, call_path(fo.status.path, session),
                timeout=self.config.health.timeout * 4,
            )
            if resp.status != 200:
                return "NOT_FOUND" if resp.status == 404 else None
            data = resp.json()
        except (UpstreamError, ValueError):
            return None
        status = data.get("status") if isinstance(data, dict) else None
        return status if isinstance(status, str) else None

    async def _stop_copy(self, inst: Instance, session: str, epoch: int) -> None:
        fo = self.config.failover
        try:
            await self.api.request(inst, fo.stop.method, call_path(fo.stop.path, session),
                                   timeout=self.config.limits.upstream_timeout)
        except UpstreamError as e:
            log.warning("stop of %s on %s: %s", session, inst.name, e.message)

    # -- rediscovery ---------------------------------------------------------------------

    async def rediscover(self, inst: Instance) -> None:
        """Reconcile what ``inst`` runs with the map: adopt unknown sessions, stop copies
        of sessions assigned elsewhere (stop, never delete)."""
        fo = self.config.failover
        try:
            resp = await self.api.request(inst, fo.list.method, fo.list.path,
                                          timeout=self.config.limits.upstream_timeout)
            items = resp.json() if resp.status == 200 else None
        except (UpstreamError, ValueError) as e:
            log.warning("rediscovery of %s failed: %s", inst.name, e)
            return
        if not isinstance(items, list):
            return
        adopted = stopped = 0
        pattern = self.config.sessions.id_pattern
        for item in items:
            if not isinstance(item, dict):
                continue
            name, status = item.get("name"), item.get("status")
            if not isinstance(name, str) or not pattern.fullmatch(name) or status in NOT_RUNNING:
                continue
            a = await self.store.get(name)
            if a is None:
                await self.store.create_if_absent(name, inst.name)
                adopted += 1
            elif a.instance != inst.name and self._fenced(a):
                await self._stop_copy(inst, name, a.epoch)
                stopped += 1
                self.events.emit("stale_copy_stopped",
                                 f"stopped stale copy of {name} on {inst.name} (assigned to {a.instance})",
                                 session=name, instance=inst.name, severity="warning")
        if adopted or stopped:
            self.router.changed.fire()
            self.events.emit("rediscovered", f"instance {inst.name}: adopted {adopted}, stopped {stopped}",
                             instance=inst.name)

    # -- 404 from an instance ------------------------------------------------------------

    def suspect(self, session: str) -> None:
        """An instance answered 404 for a session: check it still runs where assigned,
        and start it there if it does not (rate-limited per session)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._suspects.get(session, 0.0) > now:
            return
        if len(self._suspects) > 10000:
            self._suspects = {k: v for k, v in self._suspects.items() if v > now}
        self._suspects[session] = now + 10.0
        self._spawn(self._reconcile(session))

    async def _reconcile(self, session: str) -> None:
        a = self.store.cached(session)
        if a is None or a.moving or not self.is_leader():
            return
        inst = self.router.fleet.get(a.instance)
        if inst is None or not inst.healthy:
            return
        if await self._status(inst, session) == "NOT_FOUND":
            self.events.emit("session_lost", f"instance {inst.name} did not know session {session}; restoring",
                             session=session, instance=inst.name, severity="warning")
            self.moves_total["reconcile"] = self.moves_total.get("reconcile", 0) + 1
            await self._restore(a)
