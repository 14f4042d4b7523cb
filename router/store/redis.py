"""Redis assignment store: one map shared by every router process and replica.

Data model in Redis (``P`` is ``store.prefix``, default ``wa-router:``):

- ``P + "assignments"`` (hash): session -> ``"<instance>:<epoch>"``, or
  ``"<instance>:<epoch>:m"`` while the session is moving (``move(..., moving=True)`` until
  ``settle``). The whole map, read in bulk (``HSCAN ... COUNT 10000``) at start and after
  every reconnect.
- ``P + "counts"`` (hash): instance -> number of sessions assigned to it, changed by the
  same scripts that change the map, so it always equals a recount of the map (an
  instance whose count reaches 0 is deleted from the hash).
- ``P + "epoch"`` (string): global counter. Every create and move takes its next value, so a
  session's epoch only grows, even across remove + create, and is never reused. Epochs are
  therefore increasing but not consecutive (a new session does not start at 1).
- ``P + "changes"`` (pub/sub channel): every write PUBLISHes what it changed, in the same
  Lua script as the change (see ``router.store.redis_scripts``).
- The leadership lease, the drain flags and the workers' stats: ``router.store.redis_shared``.

Every write is a Lua script (EVALSHA, reloaded after NOSCRIPT): ``create_if_absent``
(first writer wins), ``move`` (optional compare-and-set on the epoch), ``settle``
(compare-and-set on the epoch, which it leaves unchanged), ``remove``, and the lease's
acquire, renew and release.

The parts, one concern each:

- ``router.store.localcopy``: the full local copy of the map (session -> ``Assignment``)
  and per-instance counts, so ``cached()``, ``counts()``, ``len()`` and ``list()`` never do
  I/O; pure, with the rules that let bulk reads, messages and replies arrive in any order.
- ``router.store.redis_sync``: the task that subscribes, re-reads the map after every
  (re)connection and applies the published changes.
- ``router.store.redis_commands``: bounded commands, the scripts, and health.
- this module: ``RedisStore``, the map's writes (script replies into the local copy), and
  the lifecycle.

Unavailability: a failed command, or a pub/sub connection that cannot be re-established,
makes ``healthy`` False (one warning per outage). Meanwhile ``cached()`` keeps answering and
every other call (``get``, the writes, the leadership calls) raises ``StoreUnavailable`` at
once. The listener reconnects with backoff (50 ms doubling to 1 s); after the reconnection
and the full re-read, ``healthy`` is True again. Every Redis call is bounded (1 s connect,
1 s per operation by default), so nothing hangs on a blackholed server.

URLs: ``redis://``, ``rediss://`` and ``unix://`` go to ``redis.asyncio.from_url`` (all its
query options apply); ``redis+sentinel://[[user]:password@]h1:26379,h2:26379/service[/db]``
uses ``redis.asyncio.sentinel.Sentinel`` (format: ``router.redis_url``). Redis Cluster is
not supported (use Sentinel, or one primary with a replica).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis

from router.errors import StoreUnavailable
from router.redis_url import url_location
from router.store import redis_scripts
from router.store.base import Assignment, AssignmentStore, Listener, StaleEpoch
from router.store.localcopy import ChangeCallback, LocalCopy, parse_value
from router.store.redis_client import RedisClients
from router.store.redis_commands import Commands
from router.store.redis_shared import RedisDrainFlags, RedisLease, RedisWorkerStats
from router.store.redis_sync import Sync
from router.tasks import Tasks

ClientFactory = Callable[[], "Redis"]


class RedisStore:
    """The assignment map in Redis, with a full local copy kept current by pub/sub.

    ``on_change(assignment_or_None, session)`` is called (from the listener task; it must
    not block) when this store learns of a change made by another process: a message, or a
    difference found by a re-read after a reconnect. It is not called for this store's own
    writes (their caller has the result) nor for the initial load.

    ``add_listener(cb)``: ``cb(session, assignment_or_None)`` is called after EVERY change
    of the local copy: this store's own writes (before the write returns), messages from
    other processes (including a ``settle`` elsewhere), what ``get`` or a ``StaleEpoch``
    reply brought in, and the differences found by a re-read (not the initial load). A
    change the copy already had (e.g. the message of one's own write) is not repeated.

    Options: ``client_factory`` returns a configured ``redis.asyncio.Redis`` (called twice:
    commands, pub/sub) instead of building one from ``url``; ``connect_timeout`` and
    ``op_timeout`` bound every connection and reply (a call waits at most twice their sum,
    retry included); ``start_timeout`` bounds ``start()``; ``max_connections`` bounds the
    commands in flight; an idle pub/sub connection is PINGed every ``keepalive`` seconds.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "wa-router:",
        *,
        client_factory: ClientFactory | None = None,
        on_change: ChangeCallback | None = None,
        connect_timeout: float = 1.0,
        op_timeout: float = 1.0,
        start_timeout: float = 10.0,
        max_connections: int = 64,
        keepalive: float = 5.0,
    ) -> None:
        self._location = url_location(url)  # for repr: never the URL (it may hold a password)
        self.prefix = prefix
        self._factory = client_factory
        self._op_timeout = op_timeout
        self._start_timeout = start_timeout
        self.key_assignments = prefix + "assignments"
        self.key_counts = prefix + "counts"
        self.key_epoch = prefix + "epoch"
        self.channel = prefix + "changes"
        self._keys = [self.key_assignments, self.key_counts, self.key_epoch]

        self._copy = LocalCopy(on_change)
        # An upper bound for one call, retry included (redis-py retries once on a dead
        # pooled connection), so that a caller never waits longer than this.
        deadline = 2 * (connect_timeout + op_timeout)
        self._commands = Commands(
            deadline=deadline, max_connections=max_connections, cached=self._copy.__len__
        )
        self._sync = Sync(
            self._copy,
            self._commands,
            key_assignments=self.key_assignments,
            channel=self.channel,
            keepalive=keepalive,
        )
        self._lease = RedisLease(self._commands, prefix)
        self._flags = RedisDrainFlags(self._commands, prefix)
        self._stats = RedisWorkerStats(self._commands, prefix)
        self.key_leader = self._lease.key
        self.key_leader_token = self._lease.key_token
        self.key_drained = self._flags.key

        self._sub: Redis | None = None
        self._clients = RedisClients(url, connect_timeout=connect_timeout)
        self._tasks = Tasks("redis-store")

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "unavailable"
        if not len(self._tasks):
            state = "not connected"
        elif not self.synced:
            state += ", re-reading"
        return (
            f"<RedisStore {self._location} prefix={self.prefix!r} "
            f"sessions={len(self._copy)} {state} resyncs={self.resyncs}>"
        )

    # -- hot path: no I/O ---------------------------------------------------------------

    @property
    def commands(self) -> Commands:
        """The bounded command connection, for other keys in the same Redis (agents)."""
        return self._commands

    def cached(self, session: str) -> Assignment | None:
        return self._copy.map.get(session)

    def counts(self) -> Mapping[str, int]:
        return self._copy.counts

    def __len__(self) -> int:
        return len(self._copy.map)

    @property
    def on_change(self) -> ChangeCallback | None:
        """Called with ``(assignment_or_None, session)`` for changes made elsewhere."""
        return self._copy.on_change

    @on_change.setter
    def on_change(self, callback: ChangeCallback | None) -> None:
        self._copy.on_change = callback

    @property
    def healthy(self) -> bool:
        """Redis answers: writes are attempted. False from a failed command or reconnection
        until the listener has reconnected and re-read the whole map."""
        return self._commands.reachable

    @property
    def synced(self) -> bool:
        """The local copy is known complete (False during a re-read after a reconnect)."""
        return self._sync.synced

    @property
    def resyncs(self) -> int:
        """Completed full re-reads, the initial load included."""
        return self._copy.loads

    async def wait_health(self, healthy: bool, timeout: float) -> bool:
        """Wait until ``healthy`` has the given value; False if ``timeout`` passed first."""
        return await self._commands.wait_health(healthy, timeout)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe and load the map; ``StoreUnavailable`` if that does not
        succeed within ``start_timeout`` (the store is then closed)."""
        if len(self._tasks):
            return
        cmd, self._sub = self._make_client(), self._make_client()  # commands, pub/sub
        self._commands.open(cmd, redis_scripts.SCRIPTS)
        self._tasks.spawn(self._sync.run(self._sub), name="redis-store-listener")
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._sync.ready.wait()
        except TimeoutError:
            error = self._commands.last_error
            await self.close()
            raise StoreUnavailable(f"redis store unavailable at start: {error}") from error

    async def close(self) -> None:
        await self._tasks.stop()
        self._tasks = Tasks("redis-store")
        for client in (self._sub, self._commands.client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        await self._clients.close()
        self._commands.client = self._sub = None
        await self._commands.set_reachable(False, None, log_it=False)

    def _make_client(self) -> Redis:
        if self._factory is not None:
            return self._factory()
        return self._clients.client(
            op_timeout=self._op_timeout, name="wa-router", decode_responses=True
        )

    # -- the map: reads and writes --------------------------------------------------------

    async def get(self, session: str) -> Assignment | None:
        """The cached assignment, else Redis' (then cached)."""
        found = self._copy.map.get(session)
        if found is not None:
            return found
        with self._copy.command() as generation:
            client = self._commands.client_or_raise()
            value = await self._commands.call(
                lambda: cast("Awaitable[str | None]", client.hget(self.key_assignments, session))
            )
            if value is None:
                return None
            assignment = parse_value(session, value)
            self._copy.learn(assignment, generation=generation)
            return assignment

    async def create_if_absent(self, session: str, instance: str) -> Assignment:
        with self._copy.command() as generation:
            _, value = await self._script("create", session, instance)
            assignment = parse_value(session, value)
            self._copy.learn(assignment, generation=generation)
            return assignment

    async def move(
        self,
        session: str,
        instance: str,
        expected_epoch: int | None,
        *,
        moving: bool = False,
    ) -> Assignment:
        expected = "" if expected_epoch is None else str(expected_epoch)
        flag = "1" if moving else "0"
        with self._copy.command() as generation:
            reply = await self._script("move", session, instance, expected, flag)
            current = parse_value(session, reply[1]) if len(reply) > 1 else None
            if current is not None:
                self._copy.learn(current, generation=generation)
            if reply[0] != 1:
                raise StaleEpoch(current)
            assert current is not None
            return current

    async def settle(self, session: str, epoch: int) -> Assignment | None:
        with self._copy.command() as generation:
            reply = await self._script("settle", session, str(epoch))
            current = parse_value(session, reply[1]) if len(reply) > 1 else None
            if current is not None:
                self._copy.learn(current, generation=generation)
            return current if reply[0] == 1 else None

    async def remove(self, session: str, expected_epoch: int | None = None) -> bool:
        expected = "" if expected_epoch is None else str(expected_epoch)
        with self._copy.command() as generation:
            reply = await self._script("remove", session, expected)
            if reply[0] == 0:
                return False
            found = parse_value(session, reply[1])
            if reply[0] == -1:
                self._copy.learn(found, generation=generation)
                raise StaleEpoch(found)
            self._copy.forget(session, found.epoch)
            return True

    async def _script(self, name: str, *args: str) -> Any:
        """A map script: the map's keys, then ``args``, then the channel it publishes on."""
        return await self._commands.script(name, self._keys, *args, self.channel)

    async def list(self, instance: str | None = None) -> list[Assignment]:
        """From the local copy (complete while ``synced``)."""
        if instance is None:
            return list(self._copy.map.values())
        return [a for a in self._copy.map.values() if a.instance == instance]

    def add_listener(self, listener: Listener) -> None:
        self._copy.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._copy.remove_listener(listener)

    # -- shared beside the map (router.store.redis_shared) --------------------------------

    async def acquire_leadership(self, holder: str, ttl: float) -> int | None:
        return await self._lease.acquire_leadership(holder, ttl)

    async def renew_leadership(self, holder: str, token: int, ttl: float) -> bool:
        return await self._lease.renew_leadership(holder, token, ttl)

    async def release_leadership(self, holder: str, token: int) -> None:
        await self._lease.release_leadership(holder, token)

    async def leader(self) -> str | None:
        return await self._lease.leader()

    async def set_drained(self, instance: str, drained: bool) -> None:
        await self._flags.set_drained(instance, drained)

    async def drained(self) -> frozenset[str]:
        return await self._flags.drained()

    async def put_worker_stats(self, worker: int, payload: str, ttl: float) -> None:
        await self._stats.put_worker_stats(worker, payload, ttl)

    async def worker_stats(self, workers: Iterable[int]) -> dict[int, str | None]:
        return await self._stats.worker_stats(workers)


if TYPE_CHECKING:  # mypy proves RedisStore is an AssignmentStore

    def _conforms(store: RedisStore) -> AssignmentStore:
        return store
