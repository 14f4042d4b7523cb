"""What routers share in Redis beside the map: the leadership lease, the drain flags and
the workers' stats (``Leadership``, ``DrainFlags`` and ``WorkerStatsStore`` in
``router.store.base``).

Keys (``P`` is ``store.prefix``): ``P + "leader"`` (string with a PX expiry,
``"<token>:<holder>"``) and ``P + "leader_token"`` (counter INCRed on every takeover, so
fencing tokens only grow), both created on first use; ``P + "drained"`` (set of instance
names); ``P + "workers:<n>"`` (strings with a PX expiry). Redis unavailable: every call
raises ``StoreUnavailable`` (see ``router.store.redis_commands``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, cast

from router.store.base import DrainFlags, LeaderLease, WorkerStatsStore
from router.store.redis_commands import Commands


class RedisLease:
    """A lease with a fencing token, taken and kept by Lua scripts (``ACQUIRE``, ``RENEW``,
    ``RELEASE``).

    The holder should count its lease from the moment it SENT acquire/renew (its reply may
    come late) and renew well before ``ttl`` runs out, e.g. every ttl/3. ``StoreUnavailable``
    is to be taken as "not the leader": the lease then expires in Redis by itself."""

    def __init__(self, commands: Commands, prefix: str) -> None:
        self._commands = commands
        self.key = prefix + "leader"
        self.key_token = prefix + "leader_token"
        self._keys = [self.key, self.key_token]

    async def acquire_leadership(self, holder: str, ttl: float) -> int | None:
        reply = await self._commands.script("acquire", self._keys, holder, _ms(ttl))
        return None if reply is None else int(reply)

    async def renew_leadership(self, holder: str, token: int, ttl: float) -> bool:
        reply = await self._commands.script("renew", self._keys, holder, str(token), _ms(ttl))
        return int(reply) == 1

    async def release_leadership(self, holder: str, token: int) -> None:
        await self._commands.script("release", self._keys, holder, str(token))

    async def leader(self) -> str | None:
        client = self._commands.client_or_raise()
        value = await self._commands.call(
            lambda: cast("Awaitable[str | None]", client.get(self.key))
        )
        if value is None:
            return None
        return value.partition(":")[2]  # holder names may hold ':'; tokens do not


class RedisDrainFlags:
    """The instances operators drained: one set, read by every router's drainer."""

    def __init__(self, commands: Commands, prefix: str) -> None:
        self._commands = commands
        self.key = prefix + "drained"

    async def set_drained(self, instance: str, drained: bool) -> None:
        client = self._commands.client_or_raise()
        if drained:
            await self._commands.call(lambda: client.sadd(self.key, instance))
        else:
            await self._commands.call(lambda: client.srem(self.key, instance))

    async def drained(self) -> frozenset[str]:
        client = self._commands.client_or_raise()
        members = await self._commands.call(
            lambda: cast("Awaitable[set[str]]", client.smembers(self.key))
        )
        return frozenset(members)


class RedisWorkerStats:
    """Each worker process's latest counters (``router.workerstats``), expiring."""

    def __init__(self, commands: Commands, prefix: str) -> None:
        self._commands = commands
        self._prefix = prefix + "workers:"

    async def put_worker_stats(self, worker: int, payload: str, ttl: float) -> None:
        client = self._commands.client_or_raise()
        key = f"{self._prefix}{worker}"
        await self._commands.call(lambda: client.set(key, payload, px=int(ttl * 1000)))

    async def worker_stats(self, workers: Iterable[int]) -> dict[int, str | None]:
        indices = list(workers)
        if not indices:
            return {}
        client = self._commands.client_or_raise()
        keys = [f"{self._prefix}{w}" for w in indices]
        values = await self._commands.call(lambda: client.mget(keys))
        return {
            w: (v.decode() if isinstance(v, bytes) else v)
            for w, v in zip(indices, values, strict=True)
        }


def _ms(ttl: float) -> str:
    """A lease TTL in whole milliseconds (at least 1), as a script argument."""
    if not ttl > 0:
        raise ValueError("lease ttl must be positive")
    return str(max(1, round(ttl * 1000)))


if TYPE_CHECKING:  # mypy proves each part provides its protocol

    def _conforms(
        lease: RedisLease, flags: RedisDrainFlags, stats: RedisWorkerStats
    ) -> tuple[LeaderLease, DrainFlags, WorkerStatsStore]:
        return lease, flags, stats
