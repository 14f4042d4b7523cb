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
- ``P + "drained"`` (set): instances an operator drained (``/admin/instances/N/drain``),
  read by every router's drainer every second.
- ``P + "leader"`` (string with a PX expiry): the leadership lease, ``"<token>:<holder>"``;
  ``P + "leader_token"`` (counter): INCRed on every takeover, so fencing tokens only grow.
  Both exist only once leadership has been used.

Every write is a Lua script (EVALSHA, reloaded after NOSCRIPT): ``create_if_absent``
(first writer wins), ``move`` (optional compare-and-set on the epoch), ``settle``
(compare-and-set on the epoch, which it leaves unchanged), ``remove``, and the lease's
acquire, renew and release.

Each process keeps a full copy of the map (session -> ``Assignment``) and per-instance
counts derived from it: ``cached()``, ``counts()``, ``len()`` and ``list()`` never do I/O.
A listener task applies the published changes (only when they supersede the cached
assignment: a higher epoch, or the same epoch no longer moving; never the reverse),
and after any (re)connection of its pub/sub connection re-reads the whole map and replaces
the copy: it subscribes first, then scans, so a change is either in the scan or in a
message that follows it, and an entry removed while it was disconnected does not survive.

Unavailability: a failed command, or a pub/sub connection that cannot be re-established,
makes ``healthy`` False (one warning per outage). Meanwhile ``cached()`` keeps answering and
every other call (``get``, the writes, the leadership calls) raises ``StoreUnavailable`` at
once. The listener reconnects with backoff (50 ms doubling to 1 s); after the reconnection
and the full re-read, ``healthy`` is True again. Every Redis call is bounded (1 s connect,
1 s per operation by default), so nothing hangs on a blackholed server.

URLs: ``redis://``, ``rediss://`` and ``unix://`` go to ``redis.asyncio.from_url`` (all its
query options apply); ``redis+sentinel://[[user]:password@]h1:26379,h2:26379/service[/db]``
uses ``redis.asyncio.sentinel.Sentinel`` (format: ``router.store.redis_url``). Redis
Cluster is not supported (use Sentinel, or one primary with a replica).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from router.errors import StoreUnavailable
from router.store import redis_scripts
from router.store.base import Assignment, AssignmentStore, Listener, StaleEpoch
from router.store.redis_client import RedisClients

log = logging.getLogger(__name__)

T = TypeVar("T")
ChangeCallback = Callable[[Assignment | None, str], None]  # (assignment, session)
ClientFactory = Callable[[], "Redis"]

SCAN_COUNT: Final = 10_000
# The listener wakes this often when no message comes, to notice a failed command.
_TICK: Final = 0.25
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0

# Errors that mean "Redis cannot be used right now" (as opposed to a bug in a reply).
# BusyLoadingError (restarted Redis still reading its AOF) is a ConnectionError; a
# ReadOnlyError means we are talking to a replica (e.g. mid-failover).
_LOST: Final = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ReadOnlyError,
    OSError,
    TimeoutError,
)


class _Resync(Exception):
    """The listener must drop its pub/sub connection and re-read the map."""


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
        self._url = url
        self.prefix = prefix
        self.on_change = on_change
        self._factory = client_factory
        self._connect_timeout = connect_timeout
        self._op_timeout = op_timeout
        self._start_timeout = start_timeout
        self._keepalive = keepalive
        # An upper bound for one call, retry included (redis-py retries once on a dead
        # pooled connection), so that a caller never waits longer than this.
        self._deadline = 2 * (connect_timeout + op_timeout)
        self.key_assignments = prefix + "assignments"
        self.key_counts = prefix + "counts"
        self.key_epoch = prefix + "epoch"
        self.channel = prefix + "changes"
        self.key_leader = prefix + "leader"
        self.key_leader_token = prefix + "leader_token"
        self.key_drained = prefix + "drained"
        self._keys = [self.key_assignments, self.key_counts, self.key_epoch]
        self._lease_keys = [self.key_leader, self.key_leader_token]
        self._listeners: dict[Listener, None] = {}  # ordered set
        # Bounds the commands in flight, hence the pooled connections (redis-py's pool opens
        # one per concurrent command, without limit): a burst of placements waits here.
        self._slots = asyncio.Semaphore(max_connections)

        self._map: dict[str, Assignment] = {}
        self._counts: dict[str, int] = {}
        # Bumped when the map is replaced by a re-read: a command that started before must
        # not write its (possibly older) result into the new copy; its message will.
        self._generation = 0
        # While commands are in flight, removals seen are remembered, so a command's reply
        # read before a removal cannot put the removed entry back into the copy.
        self._in_flight = 0
        self._tombstones: dict[str, int] = {}

        self._cmd: Redis | None = None
        self._sub: Redis | None = None
        self._clients = RedisClients(url, connect_timeout=connect_timeout)
        self._scripts: dict[str, AsyncScript] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._health = asyncio.Condition()
        self._reachable = False  # commands may be sent
        self._synced = False  # the local copy follows Redis (subscribed and re-read)
        self._down_since: float | None = None
        self._last_error: BaseException | None = None
        self._reconnected = False  # the pub/sub connection was re-established under us
        self.resyncs = 0  # completed full re-reads, the initial load included

    # -- hot path: no I/O ---------------------------------------------------------------

    def cached(self, session: str) -> Assignment | None:
        return self._map.get(session)

    def counts(self) -> Mapping[str, int]:
        return self._counts

    def __len__(self) -> int:
        return len(self._map)

    @property
    def healthy(self) -> bool:
        """Redis answers: writes are attempted. False from a failed command or reconnection
        until the listener has reconnected and re-read the whole map."""
        return self._reachable

    @property
    def synced(self) -> bool:
        """The local copy is known complete (False during a re-read after a reconnect)."""
        return self._synced

    async def wait_health(self, healthy: bool, timeout: float) -> bool:
        """Wait until ``healthy`` has the given value; False if ``timeout`` passed first."""
        async with self._health:
            try:
                async with asyncio.timeout(timeout):
                    await self._health.wait_for(lambda: self._reachable == healthy)
            except TimeoutError:
                return False
        return True

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe and load the map; ``StoreUnavailable`` if that does not
        succeed within ``start_timeout`` (the store is then closed)."""
        if self._task is not None:
            return
        self._cmd, self._sub = self._make_clients()
        self._scripts = {
            "create": self._cmd.register_script(redis_scripts.CREATE),
            "move": self._cmd.register_script(redis_scripts.MOVE),
            "settle": self._cmd.register_script(redis_scripts.SETTLE),
            "remove": self._cmd.register_script(redis_scripts.REMOVE),
            "acquire": self._cmd.register_script(redis_scripts.ACQUIRE),
            "renew": self._cmd.register_script(redis_scripts.RENEW),
            "release": self._cmd.register_script(redis_scripts.RELEASE),
        }
        self._task = asyncio.create_task(self._listen(), name="redis-store-listener")
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._ready.wait()
        except TimeoutError:
            error = self._last_error
            await self.close()
            raise StoreUnavailable(f"redis store unavailable at start: {error}") from error

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in (self._sub, self._cmd):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        await self._clients.close()
        self._cmd = self._sub = None
        await self._set_reachable(False, None, log_it=False)

    def _make_clients(self) -> tuple[Redis, Redis]:
        if self._factory is not None:
            cmd, sub = self._factory(), self._factory()
        else:
            cmd = self._clients.client(op_timeout=self._op_timeout, name="wa-router",
                                       decode_responses=True)
            sub = self._clients.client(op_timeout=self._op_timeout, name="wa-router",
                                       decode_responses=True)
        return cmd, sub

    # -- reads and writes -----------------------------------------------------------------

    async def get(self, session: str) -> Assignment | None:
        """The cached assignment, else Redis' (then cached)."""
        found = self._map.get(session)
        if found is not None:
            return found
        with self._command() as generation:
            cmd = self._client_or_raise()
            value = await self._call(
                lambda: cast("Awaitable[str | None]", cmd.hget(self.key_assignments, session))
            )
            if value is None:
                return None
            assignment = self._parse(session, value)
            self._learn(assignment, generation=generation)
            return assignment

    async def create_if_absent(self, session: str, instance: str) -> Assignment:
        with self._command() as generation:
            _, value = await self._script("create", session, instance, self.channel)
            assignment = self._parse(session, value)
            self._learn(assignment, generation=generation)
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
        with self._command() as generation:
            reply = await self._script("move", session, instance, expected, flag, self.channel)
            if reply[0] != 1:
                current = self._parse(session, reply[1]) if len(reply) > 1 else None
                if current is not None:
                    self._learn(current, generation=generation)
                raise StaleEpoch(current)
            assignment = self._parse(session, reply[1])
            self._learn(assignment, generation=generation)
            return assignment

    async def settle(self, session: str, epoch: int) -> Assignment | None:
        with self._command() as generation:
            reply = await self._script("settle", session, str(epoch), self.channel)
            current = self._parse(session, reply[1]) if len(reply) > 1 else None
            if current is not None:
                self._learn(current, generation=generation)
            return current if reply[0] == 1 else None

    async def remove(self, session: str, expected_epoch: int | None = None) -> bool:
        expected = "" if expected_epoch is None else str(expected_epoch)
        with self._command() as generation:
            reply = await self._script("remove", session, expected, self.channel)
            if reply[0] == 0:
                return False
            found = self._parse(session, reply[1])
            if reply[0] == -1:
                self._learn(found, generation=generation)
                raise StaleEpoch(found)
            self._forget(session, found.epoch)
            return True

    async def list(self, instance: str | None = None) -> list[Assignment]:
        """From the local copy (complete while ``synced``)."""
        if instance is None:
            return list(self._map.values())
        return [a for a in self._map.values() if a.instance == instance]

    # -- listeners ------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners[listener] = None

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.pop(listener, None)

    # -- leadership -----------------------------------------------------------------------
    #
    # A lease with a fencing token. The holder should count its lease from the moment it
    # SENT acquire/renew (its reply may come late) and renew well before ``ttl`` runs out,
    # e.g. every ttl/3. Redis unavailable: ``StoreUnavailable`` (to be taken as "not the
    # leader"; the lease then expires in Redis by itself).

    async def acquire_leadership(self, holder: str, ttl: float) -> int | None:
        reply = await self._script("acquire", holder, _ms(ttl), keys=self._lease_keys)
        return None if reply is None else int(reply)

    async def renew_leadership(self, holder: str, token: int, ttl: float) -> bool:
        reply = await self._script("renew", holder, str(token), _ms(ttl), keys=self._lease_keys)
        return int(reply) == 1

    async def release_leadership(self, holder: str, token: int) -> None:
        await self._script("release", holder, str(token), keys=self._lease_keys)

    async def leader(self) -> str | None:
        cmd = self._client_or_raise()
        value = await self._call(lambda: cast("Awaitable[str | None]", cmd.get(self.key_leader)))
        if value is None:
            return None
        return value.partition(":")[2]

    # -- drain flags ----------------------------------------------------------------------

    async def set_drained(self, instance: str, drained: bool) -> None:
        cmd = self._client_or_raise()
        if drained:
            await self._call(lambda: cmd.sadd(self.key_drained, instance))
        else:
            await self._call(lambda: cmd.srem(self.key_drained, instance))

    async def drained(self) -> frozenset[str]:
        cmd = self._client_or_raise()
        members = await self._call(lambda: cast("Awaitable[set[str]]", cmd.smembers(self.key_drained)))
        return frozenset(members)

    # -- worker stats (router.workerstats) ------------------------------------------------

    async def put_worker_stats(self, worker: int, payload: str, ttl: float) -> None:
        cmd = self._client_or_raise()
        await self._call(lambda: cmd.set(f"{self.prefix}workers:{worker}", payload, px=int(ttl * 1000)))

    async def worker_stats(self, workers: Iterable[int]) -> dict[int, str | None]:
        indices = list(workers)
        if not indices:
            return {}
        cmd = self._client_or_raise()
        values = await self._call(lambda: cmd.mget([f"{self.prefix}workers:{w}" for w in indices]))
        return {w: (v.decode() if isinstance(v, bytes) else v) for w, v in zip(indices, values, strict=True)}

    def _client_or_raise(self) -> Redis:
        if self._cmd is None or not self._reachable:
            raise StoreUnavailable("redis store unavailable")
        return self._cmd

    async def _script(self, name: str, *args: str, keys: builtins.list[str] | None = None) -> Any:
        cmd = self._client_or_raise()
        script = self._scripts[name]
        keys = self._keys if keys is None else keys
        return await self._call(lambda: script(keys=keys, args=args, client=cmd))

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one command, bounded; errors become ``StoreUnavailable``."""
        try:
            async with asyncio.timeout(self._deadline):
                await self._slots.acquire()
        except TimeoutError:  # overloaded here, which says nothing about Redis
            raise StoreUnavailable("redis store busy") from None
        try:
            async with asyncio.timeout(self._deadline):
                return await make()
        except _LOST as e:
            await self._set_reachable(False, e)
            raise StoreUnavailable("redis store unavailable") from e
        except rexc.RedisError as e:  # e.g. OOM: Redis is up but refuses the write
            log.warning("redis store: command failed: %s", e)
            raise StoreUnavailable("redis store refused the command") from e
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _command(self) -> Iterator[int]:
        self._in_flight += 1
        try:
            yield self._generation
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._tombstones:
                self._tombstones.clear()

    # -- the local copy -------------------------------------------------------------------

    @staticmethod
    def _parse(session: str, value: str) -> Assignment:
        """A hash value: ``instance:epoch``, or ``instance:epoch:m`` while moving."""
        moving = value.endswith(":m")
        if moving:
            value = value[:-2]
        instance, _, epoch = value.rpartition(":")
        return Assignment(session, sys.intern(instance), int(epoch), moving)

    def _learn(
        self, new: Assignment, *, generation: int | None = None, notify: bool = False
    ) -> bool:
        """Put ``new`` in the copy unless what is there (or was removed) is as recent.
        Listeners are told; ``on_change`` too when ``notify`` (a change from elsewhere)."""
        if generation is not None and generation != self._generation:
            return False
        session = new.session
        current = self._map.get(session)
        if current is not None:
            if not new.supersedes(current):
                return False
            self._uncount(current.instance)
        elif self._tombstones and self._tombstones.get(session, -1) >= new.epoch:
            return False
        self._map[session] = new
        self._counts[new.instance] = self._counts.get(new.instance, 0) + 1
        self._changed(session, new, foreign=notify)
        return True

    def _forget(self, session: str, epoch: int, *, notify: bool = False) -> bool:
        """Drop ``session`` if the copy holds the removed epoch (or an older one)."""
        if self._in_flight:
            self._tombstones[session] = max(epoch, self._tombstones.get(session, -1))
        current = self._map.get(session)
        if current is None or current.epoch > epoch:
            return False
        del self._map[session]
        self._uncount(current.instance)
        self._changed(session, None, foreign=notify)
        return True

    def _uncount(self, instance: str) -> None:
        left = self._counts[instance] - 1
        if left:
            self._counts[instance] = left
        else:
            del self._counts[instance]

    def _changed(self, session: str, assignment: Assignment | None, *, foreign: bool) -> None:
        """The copy changed: tell the listeners, and ``on_change`` if ``foreign``."""
        for listener in tuple(self._listeners):
            try:
                listener(session, assignment)
            except Exception:  # a bug in a callback must not stop the listener task
                log.exception("redis store: listener failed")
        callback = self.on_change
        if foreign and callback is not None:
            try:
                callback(assignment, session)
            except Exception:
                log.exception("redis store: on_change callback failed")

    def _apply_message(self, data: str) -> None:
        try:
            change = json.loads(data)
            session, epoch = str(change["s"]), int(change["e"])
            if change["op"] == "set":
                moving = change.get("m") is True
                assignment = Assignment(session, sys.intern(str(change["i"])), epoch, moving)
                self._learn(assignment, notify=True)
            else:
                self._forget(session, epoch, notify=True)
        except (ValueError, KeyError, TypeError):
            log.warning("redis store: ignored a malformed change message")

    async def _load(self) -> None:
        """Read the whole map (HSCAN) and replace the local copy with it."""
        cmd = self._cmd
        assert cmd is not None
        fresh: dict[str, Assignment] = {}
        intern = sys.intern
        cursor = 0
        while True:  # HSCAN ends when the cursor comes back to 0
            async with asyncio.timeout(self._deadline):
                cursor, chunk = await cast(
                    "Awaitable[tuple[int, dict[str, str]]]",
                    cmd.hscan(self.key_assignments, cursor, count=SCAN_COUNT),
                )
            for session, value in chunk.items():
                moving = value.endswith(":m")
                instance, _, epoch_text = (value[:-2] if moving else value).rpartition(":")
                found = Assignment(session, intern(instance), int(epoch_text), moving)
                seen = fresh.get(session)
                # HSCAN may return a field twice; keep the newer value.
                if seen is None or found.supersedes(seen):
                    fresh[session] = found
            if cursor == 0:
                break
        old, self._map = self._map, fresh
        self._counts = dict(Counter(a.instance for a in fresh.values()))
        self._generation += 1
        first = self.resyncs == 0
        self.resyncs += 1
        if not first and (self.on_change is not None or self._listeners):
            for session, assignment in fresh.items():
                if old.get(session) != assignment:
                    self._changed(session, assignment, foreign=True)
            for session in old.keys() - fresh.keys():
                self._changed(session, None, foreign=True)

    # -- health ---------------------------------------------------------------------------

    async def _set_reachable(
        self, reachable: bool, error: BaseException | None, *, log_it: bool = True
    ) -> None:
        if error is not None:
            self._last_error = error
        if reachable == self._reachable:
            return
        self._reachable = reachable
        now = time.monotonic()
        if not reachable:
            self._down_since = now
            if log_it:
                log.warning(
                    "redis store unavailable (%s); serving %d cached assignments, "
                    "new placements fail until it is back",
                    error,
                    len(self._map),
                )
        else:
            if self._down_since is not None and log_it:
                log.warning(
                    "redis store available again after %.1fs (%d assignments)",
                    now - self._down_since,
                    len(self._map),
                )
            self._down_since = None
        async with self._health:
            self._health.notify_all()

    # -- the listener ---------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe, re-read the map, apply messages; after any failure, start over."""
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            pubsub: PubSub | None = None
            try:
                try:
                    pubsub = await self._subscribe()
                    await self._load()
                except Exception as e:  # Redis is not usable: back off
                    self._synced = False
                    await self._set_reachable(False, e, log_it=self._ready.is_set())
                    delay = min(max(2 * delay, _BACKOFF_MIN), _BACKOFF_MAX)
                    continue
                self._synced = True
                self._ready.set()
                await self._set_reachable(True, None)
                delay = 0.0
                try:
                    await self._pump(pubsub)
                except Exception as e:
                    # Only the pub/sub connection is known lost: reconnect at once (a
                    # failing reconnection is what marks the store unavailable).
                    self._synced = False
                    if not isinstance(e, (_Resync, *_LOST)):
                        log.warning("redis store: listener error, re-reading", exc_info=True)
            finally:
                if pubsub is not None:
                    await self._unsubscribe(pubsub)

    async def _subscribe(self) -> PubSub:
        """A new subscription, confirmed: every change published after this reaches us."""
        assert self._sub is not None
        pubsub = self._sub.pubsub()
        try:
            async with asyncio.timeout(self._deadline):
                await pubsub.subscribe(self.channel)
                while True:  # bounded by the timeout
                    message = await pubsub.get_message(timeout=self._deadline)
                    if message is not None and message["type"] == "subscribe":
                        break
            # redis-py reconnects and resubscribes a PubSub by itself, silently: the
            # messages published meanwhile would be lost without a re-read. No retry makes
            # the error surface; the callback notices a reconnection that happens anyway.
            connection = pubsub.connection
            assert connection is not None
            connection.retry = Retry(NoBackoff(), 0)
            self._reconnected = False
            connection.register_connect_callback(self._on_pubsub_reconnect)
        except BaseException:
            await self._unsubscribe(pubsub)
            raise
        return pubsub

    def _on_pubsub_reconnect(self, connection: object) -> None:
        self._reconnected = True

    async def _unsubscribe(self, pubsub: PubSub) -> None:
        if pubsub.connection is not None:  # pooled connections outlive this PubSub
            pubsub.connection.deregister_connect_callback(self._on_pubsub_reconnect)
        with contextlib.suppress(Exception):
            # Through a Callable: redis-py annotates PubSub.aclose in some releases only.
            aclose: Callable[[], Awaitable[object]] = pubsub.aclose
            await aclose()

    async def _pump(self, pubsub: PubSub) -> None:
        """Apply change messages until the connection fails (raises) or a re-read is due."""
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=_TICK)
            if self._reconnected:
                raise _Resync
            now = time.monotonic()
            if message is not None:
                last_heard, ping_sent = now, None
                if message["type"] == "message":
                    self._apply_message(message["data"])
                continue
            if not self._reachable:
                # A command failed while this connection looked fine: re-read to be sure
                # nothing was missed (e.g. a failover that kept this socket open).
                raise _Resync
            if ping_sent is None:
                if now - last_heard > self._keepalive:
                    await pubsub.ping()
                    ping_sent = now
            elif now - ping_sent > self._deadline:
                raise rexc.TimeoutError("no answer to PING on the pub/sub connection")


def _ms(ttl: float) -> str:
    """A lease TTL in whole milliseconds (at least 1), as a script argument."""
    if not ttl > 0:
        raise ValueError("lease ttl must be positive")
    return str(max(1, round(ttl * 1000)))


if TYPE_CHECKING:  # mypy proves RedisStore is an AssignmentStore

    def _conforms(store: RedisStore) -> AssignmentStore:
        return store
