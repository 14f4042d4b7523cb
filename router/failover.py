"""Failover, rediscovery and the 404 check: when to move sessions, not how (``Mover``).

Only the leader acts (with one router process, it is always the leader). Triggers come
from the health monitor (an instance down past ``failover.grace``, an instance up), from
the leader lease (this router just became leader) and from the data path (an instance
answered 404 for a session it should hold).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from router.agent.fencing import Fencing
from router.clock import Clock
from router.events import EventLog
from router.instances import Fleet, Instance
from router.moves import Move, Mover
from router.pulse import Pulse
from router.store.base import Assignments
from router.tasks import Tasks

log = logging.getLogger("wa_router.failover")

SUSPECT_INTERVAL = 10.0  # one 404 check per session per this many seconds


class Failover:
    def __init__(self, store: Assignments, fleet: Fleet, mover: Mover, events: EventLog,
                 changed: Pulse, clock: Clock, is_leader: Callable[[], bool],
                 fencing: Fencing | None = None) -> None:
        self.store = store
        self.fleet = fleet
        self.mover = mover
        self.events = events
        self._changed = changed
        self._clock = clock
        self.is_leader = is_leader
        self.tasks = Tasks("failover")
        self._suspects: dict[str, float] = {}
        self.failovers_total: dict[str, int] = {}
        # Instances with a self-fencing agent are fenced before their sessions move.
        self.fencing = fencing

    def __repr__(self) -> str:
        return f"<Failover leader={self.is_leader()} tasks={len(self.tasks)} failovers={self.failovers_total}>"

    async def stop(self) -> None:
        await self.tasks.stop()

    # -- triggers --------------------------------------------------------------------------

    def instance_failed(self, inst: Instance) -> None:
        """An instance stayed down past ``failover.grace``."""
        if self.is_leader():
            self.tasks.spawn(self.fail_over(inst))

    def instance_up(self, inst: Instance) -> None:
        if self.is_leader():
            self.tasks.spawn(self.rediscover(inst))

    def became_leader(self) -> None:
        """Finish what a previous leader left: sessions still moving, instances still down."""
        self.tasks.spawn(self._resume())

    async def _resume(self) -> None:
        for a in await self.store.list():
            if a.moving:
                self.tasks.spawn(self.mover.restore(a))
        # Spawned, not awaited: one instance's failover (restores can take minutes) must
        # not delay another's, nor the rediscovery of the healthy instances.
        for inst in self.fleet:
            if inst.health.failed_over and not inst.healthy:
                self.tasks.spawn(self.fail_over(inst))
            elif inst.healthy:
                self.tasks.spawn(self.rediscover(inst))

    # -- failover --------------------------------------------------------------------------

    async def fail_over(self, inst: Instance) -> None:
        sessions = await self.store.list(inst.name)
        if not sessions:
            return
        # A partition looks like a crash from here: if the instance has an agent, its
        # sessions may still run there, so wait until the agent has stopped them.
        if self.fencing is not None and not await self.fencing.gate(
            inst.name, lambda: self.is_leader() and not inst.healthy
        ):
            return
        self.failovers_total[inst.name] = self.failovers_total.get(inst.name, 0) + 1
        self.events.emit(
            "failover_started",
            f"instance {inst.name} down past grace: moving {len(sessions)} sessions",
            instance=inst.name, severity="critical", data={"sessions": len(sessions)},
        )
        started = self._clock.now()
        moved = await self.mover.move_many(
            Move(a.session, "failover", source=inst.name) for a in sessions
        )
        failed = len(sessions) - moved
        self.events.emit(
            "failover_finished",
            f"instance {inst.name}: {moved} sessions moved, {failed} failed, "
            f"in {self._clock.now() - started:.1f}s",
            instance=inst.name, severity="warning" if failed else "info",
            data={"moved": moved, "failed": failed},
        )

    # -- rediscovery -----------------------------------------------------------------------

    async def rediscover(self, inst: Instance) -> None:
        """Reconcile what ``inst`` runs with the map: adopt unknown sessions, stop copies
        of sessions assigned elsewhere (stop, never delete)."""
        names = await self.mover.api.running(inst)
        if names is None:
            log.warning("rediscovery of %s failed: its sessions could not be listed", inst.name)
            return
        adopted = stopped = 0
        stale: list[str] = []
        for name in names:
            a = await self.store.get(name)
            if a is None:
                await self.store.create_if_absent(name, inst.name)
                adopted += 1
            elif a.instance != inst.name and self.mover.fenced(a):
                if await self.mover.stop_copy(inst, name):
                    stopped += 1
                    self.events.emit("stale_copy_stopped",
                                     f"stopped stale copy of {name} on {inst.name} (assigned to {a.instance})",
                                     session=name, instance=inst.name, severity="warning")
                else:
                    stale.append(name)
        if stale:
            # Evolution API (no stop call) or a stop that failed: two copies may fight until
            # the instance is stopped; the operator has to act.
            how = "failover.stop is none: stop that instance" if not self.mover.api.can_stop else "stop failed"
            self.events.emit("stale_copy", f"instance {inst.name} runs {len(stale)} sessions assigned "
                             f"elsewhere that could not be stopped ({how}): {', '.join(stale[:10])}",
                             instance=inst.name, severity="critical", data={"sessions": stale})
        if adopted or stopped:
            self._changed.fire()
            self.events.emit("rediscovered", f"instance {inst.name}: adopted {adopted}, stopped {stopped}",
                             instance=inst.name)

    # -- 404 from an instance --------------------------------------------------------------

    def suspect(self, session: str) -> None:
        """An instance answered 404 for a session: check it still runs where assigned,
        and start it there if it does not (rate-limited per session)."""
        now = self._clock.now()
        if self._suspects.get(session, 0.0) > now:
            return
        if len(self._suspects) > 10000:
            self._suspects = {k: v for k, v in self._suspects.items() if v > now}
        self._suspects[session] = now + SUSPECT_INTERVAL
        self.tasks.spawn(self._reconcile(session))

    async def _reconcile(self, session: str) -> None:
        a = self.store.cached(session)
        if a is None or a.moving or not self.is_leader():
            return
        inst = self.fleet.get(a.instance)
        if inst is None or not inst.healthy:
            return
        if await self.mover.api.status(inst, session) == "NOT_FOUND":
            self.events.emit("session_lost", f"instance {inst.name} did not know session {session}; restoring",
                             session=session, instance=inst.name, severity="warning")
            self.mover.count("reconcile")
            await self.mover.restore(a)
