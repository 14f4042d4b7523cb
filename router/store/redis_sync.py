"""The Redis store's sync loop: keeps the local copy following Redis through pub/sub.

One task: subscribe to the changes channel, then read the whole map (HSCAN) into the copy,
then apply every message; after any failure, start over. Subscribing before scanning
means a change is either in the scan or in a message that follows it, and an entry
removed while disconnected does not survive the re-read (``router.store.localcopy`` says
why the order in which the two arrive does not matter).

The loop also watches health: it is what marks the store reachable again (after the
reconnection and the re-read), it re-reads when a command failed while the subscription
looked fine, and it PINGs an idle subscription so that a dead one is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, cast

import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.backoff import Backoff
from router.store.base import Assignment
from router.store.localcopy import LocalCopy, add_scanned, log
from router.store.redis_commands import LOST, Commands

SCAN_COUNT: Final = 10_000
# The loop wakes this often when no message comes, to notice a failed command.
_TICK: Final = 0.25
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0


class _Resync(Exception):
    """The loop must drop its pub/sub connection and re-read the map."""


@dataclass(eq=False)
class Sync:
    """Feeds ``copy`` from ``channel`` and bulk reads of ``key_assignments``.

    ``ready`` is set after the first complete load; ``synced`` is True while the copy is
    known complete (False from a lost subscription until the re-read is done)."""

    copy: LocalCopy
    commands: Commands
    key_assignments: str
    channel: str
    keepalive: float  # PING an idle subscription after this many seconds
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    synced: bool = field(default=False, init=False)
    # The pub/sub connection was re-established under us (by redis-py, silently).
    _reconnected: bool = field(default=False, init=False)

    async def run(self, sub: Redis) -> None:
        """Subscribe (through ``sub``), re-read the map, apply messages; after any
        failure, start over, backing off while Redis cannot be reached. Never returns."""
        backoff = Backoff(base=_BACKOFF_MIN, cap=_BACKOFF_MAX, jitter=0.0)
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            pubsub: PubSub | None = None
            try:
                try:
                    pubsub = await self._subscribe(sub)
                    await self._load()
                except Exception as e:  # Redis is not usable: back off
                    self.synced = False
                    await self.commands.set_reachable(False, e, log_it=self.ready.is_set())
                    delay = backoff.next()
                    continue
                self.synced = True
                self.ready.set()
                await self.commands.set_reachable(True, None)
                backoff.reset()
                delay = 0.0
                try:
                    await self._pump(pubsub)
                except Exception as e:
                    # Only the pub/sub connection is known lost: reconnect at once (a
                    # failing reconnection is what marks the store unavailable).
                    self.synced = False
                    if not isinstance(e, (_Resync, *LOST)):
                        log.warning("redis store: listener error, re-reading", exc_info=True)
            finally:
                if pubsub is not None:
                    await self._unsubscribe(pubsub)

    async def _load(self) -> None:
        """Read the whole map (HSCAN) and replace the local copy with it."""
        client = self.commands.client
        assert client is not None
        fresh: dict[str, Assignment] = {}
        cursor = 0
        while True:  # HSCAN ends when the cursor comes back to 0
            async with asyncio.timeout(self.commands.deadline):
                cursor, chunk = await cast(
                    "Awaitable[tuple[int, dict[str, str]]]",
                    client.hscan(self.key_assignments, cursor, count=SCAN_COUNT),
                )
            add_scanned(fresh, chunk)
            if cursor == 0:
                break
        self.copy.replace(fresh)

    async def _subscribe(self, sub: Redis) -> PubSub:
        """A new subscription, confirmed: every change published after this reaches us."""
        deadline = self.commands.deadline
        pubsub = sub.pubsub()
        try:
            async with asyncio.timeout(deadline):
                await pubsub.subscribe(self.channel)
                while True:  # bounded by the timeout
                    message = await pubsub.get_message(timeout=deadline)
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
                    self.copy.apply_message(message["data"])
                continue
            if not self.commands.reachable:
                # A command failed while this connection looked fine: re-read to be sure
                # nothing was missed (e.g. a failover that kept this socket open).
                raise _Resync
            if ping_sent is None:
                if now - last_heard > self.keepalive:
                    await pubsub.ping()
                    ping_sent = now
            elif now - ping_sent > self.commands.deadline:
                raise rexc.TimeoutError("no answer to PING on the pub/sub connection")
