"""The leader's fencing before a failover: applies ``router.agent.gate`` decisions.

``Fencing.gate(instance)`` returns once the instance's sessions may be restored elsewhere:
at once without an agent, after the agent's acknowledgement of a stop order, or after its
lease has lapsed long enough. Every router also watches which agents hold their lease
(``router_instance_agent_up``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from redis.asyncio import Redis

from router.agent import keys
from router.agent.gate import Verdict, decide
from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import StoreUnavailable
from router.events import EventLog
from router.store.redis_commands import Commands
from router.tasks import Tasks

log = logging.getLogger("wa_router.fencing")
T = TypeVar("T")

POLL = 0.2  # seconds between looks at an agent's record while waiting
WATCH = 1.0  # seconds between looks at every agent's lease (the gauge)
# A wait this long with the agent holding its lease and no ack: the agent cannot stop its
# instance's sessions (the instance hangs: it takes connections and answers nothing). The
# sessions stay put (two live copies would be worse than the outage), and an operator is
# told: restart the instance (a liveness probe does it) and its agent acknowledges at once.
STUCK_AFTER = 30.0


class AgentSource(Protocol):
    """Where agents' leases, orders and acks live (Redis; a fake in tests)."""

    async def read(self, instance: str) -> keys.AgentRecord: ...
    async def post_order(self, instance: str, order: str) -> None: ...
    async def clear_order(self, instance: str) -> None: ...
    async def leases(self, instances: list[str]) -> list[bool]: ...


class RedisAgents:
    """``AgentSource`` over the store's bounded command connection."""

    def __init__(self, commands: Commands, prefix: str) -> None:
        self._commands = commands
        self._prefix = prefix

    def _call(self, make: Callable[[Redis], Awaitable[T]]) -> Awaitable[T]:
        client = self._commands.client_or_raise()
        return self._commands.call(lambda: make(client))

    async def read(self, instance: str) -> keys.AgentRecord:
        k = keys.keys(self._prefix, instance)
        return await self._call(lambda c: keys.read(c, k))

    async def post_order(self, instance: str, order: str) -> None:
        k = keys.keys(self._prefix, instance)
        await self._call(lambda c: keys.post_order(c, k, order))

    async def clear_order(self, instance: str) -> None:
        k = keys.keys(self._prefix, instance)
        await self._call(lambda c: keys.clear_order(c, k))

    async def leases(self, instances: list[str]) -> list[bool]:
        ks = [keys.keys(self._prefix, i) for i in instances]
        return await self._call(lambda c: keys.leases(c, ks))


class Fencing:
    def __init__(self, source: AgentSource | None, config: ConfigHolder, events: EventLog,
                 clock: Clock, instances: Callable[[], Iterable[str]]) -> None:
        self.source = source
        self._config = config
        self.events = events
        self._clock = clock
        self._instances = instances
        self.agent_up: dict[str, bool] = {}
        self.waits_total = 0
        self.tasks = Tasks("fencing")

    def __repr__(self) -> str:
        return f"<Fencing agents={sorted(i for i, up in self.agent_up.items() if up)}>"

    def start(self) -> None:
        if self.source is not None:
            self.tasks.spawn(self._watch(), name="agent-watch")

    async def stop(self) -> None:
        await self.tasks.stop()

    async def _watch(self) -> None:
        assert self.source is not None
        while True:
            names = sorted(self._instances())
            try:
                up = await self.source.leases(names)
                self.agent_up = dict(zip(names, up, strict=True))
            except StoreUnavailable:
                pass  # unknown: keep the last view
            await self._clock.sleep(WATCH)

    async def gate(self, instance: str, still: Callable[[], bool]) -> bool:
        """Wait until ``instance``'s sessions may move; False when ``still()`` turned false
        first (the instance came back, or this router lost the leadership)."""
        if self.source is None:
            return True
        order: str | None = None
        started = self._clock.now()
        stuck = False
        try:
            while still():
                try:
                    rec = await self.source.read(instance)
                except StoreUnavailable:
                    # Without Redis no move can be written either: look again.
                    await self._clock.sleep(POLL)
                    continue
                d = decide(rec, order, self._config.current.failover.agent_memory)
                if not stuck and d.verdict is Verdict.WAIT and rec.lease \
                        and self._clock.now() - started >= STUCK_AFTER:
                    stuck = True
                    self.events.emit(
                        "fence_stuck",
                        f"instance {instance}: its agent holds its lease but has not confirmed "
                        f"its sessions stopped for {STUCK_AFTER:.0f}s (the instance may hang): "
                        "they stay there; restart the instance to let them move",
                        instance=instance, severity="critical", data={"order": order})
                if d.verdict is Verdict.NO_AGENT:
                    return True
                if d.verdict is not Verdict.WAIT:
                    self._decided(instance, d.verdict, self._clock.now() - started)
                    return True
                if order is None:
                    order = secrets.token_hex(8)
                    await self.source.post_order(instance, order)
                    self.waits_total += 1
                    self.events.emit(
                        "fence_ordered",
                        f"instance {instance} has an agent: stop order {order} posted; its "
                        "sessions move after the agent's ack or once its lease has lapsed",
                        instance=instance, severity="warning", data={"order": order})
                await self._clock.sleep(POLL)
            return False
        except StoreUnavailable:
            return False  # the order could not be posted: the next failover tries again
        finally:
            if order is not None:
                try:
                    await self.source.clear_order(instance)
                except StoreUnavailable:
                    log.warning("stop order for %s not withdrawn (it expires)", instance)

    def _decided(self, instance: str, verdict: Verdict, waited: float) -> None:
        if verdict is Verdict.ACKED:
            self.events.emit("fence_handoff",
                             f"instance {instance}: its agent stopped every session "
                             f"after {waited:.1f}s: restoring elsewhere",
                             instance=instance, data={"waited": round(waited, 3)})
        else:
            self.events.emit("fence_lapsed",
                             f"instance {instance}: its agent's lease lapsed long enough "
                             f"(it has fenced itself) after {waited:.1f}s: restoring elsewhere",
                             instance=instance, severity="warning",
                             data={"waited": round(waited, 3)})
