"""Moving sessions: the one routine behind failover, drain, rebalance and operator moves.

A move reassigns a session (new epoch, marked *moving*, so every router holds its
requests), optionally stops the old copy, restores it on the target (``failover.restore``,
then ``failover.status`` polled until ready) and settles it. Restores run at most
``failover.restore_concurrency`` at a time per target, whoever asked for them. Every call
to an instance is fenced: sent only while the map still holds the epoch the move was
decided for, and while this router leads (or an operator asked it for this very move).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from router import backoff
from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import UpstreamError
from router.events import EventLog
from router.instance_api import InstanceApi
from router.instances import Fleet, Instance
from router.placer import Placer
from router.pulse import Pulse
from router.store.base import Assignment, Assignments, StaleEpoch

log = logging.getLogger("wa_router.moves")


@dataclass(frozen=True, slots=True)
class Move:
    """One session to move. ``source``: skip it unless it is still there (a plan made
    earlier); ``target``: None lets placement choose."""

    session: str
    reason: str
    source: str | None = None
    target: str | None = None
    stop_old: bool = False
    manual: bool = False  # an operator's move: any router may run it (the epoch fences it)
    # Planned moves (drain, rebalance) never chase a move in progress; failover does: a
    # session that was moving to the instance that died must move again.
    planned: bool = False
    still: Callable[[], bool] | None = None  # checked right before: False skips it


def restore_delay(attempt: int) -> float:
    """Pause after failed restore attempt ``attempt``: 1 s doubling to 30 s, +-20%."""
    return backoff.delay(attempt, base=1.0, cap=30.0, jitter=0.2, rand=random.random())


class Mover:
    def __init__(self, config: ConfigHolder, store: Assignments, fleet: Fleet,
                 placer: Placer, api: InstanceApi, events: EventLog, changed: Pulse,
                 clock: Clock, is_leader: Callable[[], bool]) -> None:
        self._config = config
        self._store = store
        self._fleet = fleet
        self._placer = placer
        self.api = api
        self._events = events
        self._changed = changed
        self._clock = clock
        self.is_leader = is_leader
        self._slots: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._restoring: set[tuple[str, int]] = set()
        self._manual: set[tuple[str, int]] = set()  # operator moves in progress here
        self.moves_total: dict[str, int] = {}
        self.restore_failures = 0

    def __repr__(self) -> str:
        return (f"<Mover restoring={len(self._restoring)} moves={sum(self.moves_total.values())} "
                f"failures={self.restore_failures}>")

    def _slot(self, instance: str) -> asyncio.Semaphore:
        """The target's restore slots; a reload's new limit applies to new restores."""
        limit = self._config.current.failover.restore_concurrency
        held = self._slots.get(instance)
        if held is None or held[0] != limit:
            held = self._slots[instance] = (limit, asyncio.Semaphore(limit))
        return held[1]

    def count(self, reason: str) -> None:
        self.moves_total[reason] = self.moves_total.get(reason, 0) + 1

    # -- many ------------------------------------------------------------------------------

    async def move_many(self, moves: Iterable[Move], *, window: int | None = None) -> int:
        """Run ``moves``; returns how many succeeded. ``window``: at most that many in
        flight (planned moves: the others keep serving where they are meanwhile); None:
        all at once (failover: those sessions are down, their requests should all wait)."""
        todo = list(moves)
        gate = asyncio.Semaphore(window) if window else None

        async def one(m: Move) -> bool:
            if gate is None:
                return await self.move(m)
            async with gate:
                return await self.move(m)

        results = await asyncio.gather(*(one(m) for m in todo), return_exceptions=True)
        for m, r in zip(todo, results, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.warning("move of %s (%s) failed: %r", m.session, m.reason, r)
        return sum(1 for r in results if r is True)

    # -- one -------------------------------------------------------------------------------

    async def move(self, m: Move) -> bool:
        """Reassign one session, stop its old copy if asked, restore it on its target."""
        a = self._store.cached(m.session)
        if (a is None or (m.planned and a.moving) or (m.source is not None and a.instance != m.source)
                or (m.still is not None and not m.still()) or (m.stop_old and self.pinned(a.instance))):
            return False  # gone, moving, moved since planned, no longer wanted, or unstoppable
        if m.target is not None:
            dest = self._fleet.get(m.target)
            if dest is None or not dest.available:
                return False
        async with self._placer.lock:
            if not m.manual and not self.is_leader():
                return False
            chosen = m.target or self._placer.choose(a.session, exclude=a.instance)
            if chosen is None:
                self._events.emit("restore_failed", f"no instance has room for session {a.session}",
                                  session=a.session, severity="critical")
                return False
            try:
                moved = await self._store.move(a.session, chosen, a.epoch, moving=True)
            except StaleEpoch:
                return False  # someone else moved it meanwhile: their move wins
        if m.manual:
            self._manual.add((moved.session, moved.epoch))
        self.count(m.reason)
        self._changed.fire()
        try:
            if m.stop_old:
                # Requests are held from here on: the old copy can stop without losing any.
                old = self._fleet.get(a.instance)
                if old is not None:
                    await self.stop_copy(old, a.session)
            return await self.restore(moved)
        finally:
            self._manual.discard((moved.session, moved.epoch))

    def fenced(self, a: Assignment) -> bool:
        """Still ours to act on: same epoch in the map, and we lead (or an operator asked
        this router for this very move)."""
        current = self._store.cached(a.session)
        return (current is not None and current.epoch == a.epoch
                and (self.is_leader() or (a.session, a.epoch) in self._manual))

    def pinned(self, source: str) -> bool:
        """Whether a session on ``source`` cannot move now: without a stop call
        (``failover.stop: none``) a copy ends only with its instance, so sessions move
        once it is down, never from a running one (two live copies fight)."""
        inst = self._fleet.get(source)
        return not self.api.can_stop and inst is not None and inst.healthy

    async def stop_copy(self, inst: Instance, session: str) -> bool:
        """Stop (never delete, never log out) a copy of ``session`` on ``inst``; False
        when it could not be (or there is no stop call)."""
        if not self.api.can_stop:
            return False
        try:
            resp = await self.api.stop(inst, session)
        except UpstreamError as e:
            log.warning("stop of %s on %s: %s", session, inst.name, e.message)
            return False
        return resp.status < 300 or resp.status == 404

    async def restore(self, a: Assignment) -> bool:
        """Start ``a`` on its instance until ready, then settle it (once per epoch)."""
        key = (a.session, a.epoch)
        if key in self._restoring:
            return False
        self._restoring.add(key)
        try:
            return await self._restore_attempts(a)
        finally:
            self._restoring.discard(key)

    async def _restore_attempts(self, a: Assignment) -> bool:
        fo = self._config.current.failover
        target = self._fleet.get(a.instance)
        if target is None:
            return False
        if a.moving and self.api.is_ready(await self.api.status(target, a.session)):
            # Already running there (a previous leader restored it): just settle.
            await self._settle(a, None)
            return True
        attempts = fo.restore_attempts
        for attempt in range(1, attempts + 1):
            async with self._slot(a.instance):
                if not self.fenced(a):
                    return False
                if await self._start_and_wait(target, a):
                    await self._settle(a, target)
                    return True
            if attempt < attempts:
                await self._clock.sleep(restore_delay(attempt))
        self.restore_failures += 1
        self._events.emit(
            "restore_failed",
            f"session {a.session} could not be restored on {target.name} after {attempts} attempts",
            session=a.session, instance=target.name, severity="critical",
        )
        # Release held requests: they get the instance's own answer instead of waiting.
        await self._store.settle(a.session, a.epoch)
        self._changed.fire()
        return False

    async def _settle(self, a: Assignment, announce: Instance | None) -> None:
        settled = await self._store.settle(a.session, a.epoch)
        self._changed.fire()
        if settled is not None and announce is not None:
            self._events.emit("session_moved", f"session {a.session} ready on {announce.name}",
                              session=a.session, instance=announce.name)

    async def _start_and_wait(self, target: Instance, a: Assignment) -> bool:
        cfg = self._config.current
        fo = cfg.failover
        deadline = self._clock.now() + fo.restore_timeout
        try:
            resp = await self.api.start(target, a.session,
                                        timeout=min(cfg.limits.upstream_timeout, fo.restore_timeout))
        except UpstreamError as e:
            log.warning("restore of %s on %s: %s", a.session, target.name, e.message)
            return False
        if resp.status >= 400 and resp.status != 422:
            log.warning("restore of %s on %s answered %d", a.session, target.name, resp.status)
            return False
        poll = 0.1
        while self._clock.now() < deadline:
            if not self.fenced(a):
                return False
            status = await self.api.status(target, a.session)
            if self.api.is_ready(status):
                return True
            if self.api.is_failed(status):
                return False
            await self._clock.sleep(poll)
            poll = min(poll * 1.5, 0.25)  # status GETs are cheap; readiness latency is not
        return False
