"""The Redis store's command connection: bounded calls, the Lua scripts, and health.

Every command goes through ``Commands.call``: at most ``max_connections`` in flight, each
bounded by a deadline, and every error turned into ``StoreUnavailable``, so a failing
Redis degrades service (writes refused, ``cached()`` still answering) and never crashes
it nor hangs a caller. A lost connection also marks the store unhealthy (one warning per
outage) until the sync loop (``router.store.redis_sync``) has reconnected and re-read the
map; while unhealthy, calls are refused at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from router.errors import StoreUnavailable
from router.store.localcopy import log

T = TypeVar("T")

# Errors that mean "Redis cannot be used right now" (as opposed to a bug in a reply).
# BusyLoadingError (restarted Redis still reading its AOF) is a ConnectionError; a
# ReadOnlyError means we are talking to a replica (e.g. mid-failover).
LOST: Final = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ReadOnlyError,
    OSError,
    TimeoutError,
)


async def guarded(make: Callable[[], Awaitable[T]], *, deadline: float, what: str) -> T:
    """Run one command or script within ``deadline`` seconds; every failure becomes
    ``StoreUnavailable`` (``what``: whose command, for the message)."""
    try:
        async with asyncio.timeout(deadline):
            return await make()
    except (*LOST, rexc.RedisError) as e:
        raise unavailable(e, what) from e


def unavailable(e: BaseException, what: str) -> StoreUnavailable:
    """What a Redis failure (one of ``LOST``, or any ``RedisError``) means to the caller."""
    if isinstance(e, LOST):
        return StoreUnavailable(f"redis unavailable for {what}")
    return StoreUnavailable(f"redis refused a command for {what}: {e}")  # e.g. OOM


class Commands:
    """Runs commands and scripts on one client, and knows whether Redis answers.

    ``deadline`` bounds one call, retry included; ``cached`` says how many assignments the
    local copy holds (for the outage warnings)."""

    def __init__(self, *, deadline: float, max_connections: int, cached: Callable[[], int]) -> None:
        self.deadline = deadline
        self.client: Redis | None = None
        self.reachable = False  # commands may be sent
        self.last_error: BaseException | None = None
        self._cached = cached
        # Bounds the commands in flight, hence the pooled connections (redis-py's pool opens
        # one per concurrent command, without limit): a burst of placements waits here.
        self._slots = asyncio.Semaphore(max_connections)
        self._scripts: dict[str, AsyncScript] = {}
        self._health = asyncio.Condition()
        self._down_since: float | None = None

    def open(self, client: Redis, scripts: Mapping[str, str]) -> None:
        """Use ``client`` from now on, with these Lua scripts (name -> source)."""
        self.client = client
        self._scripts = {name: client.register_script(source) for name, source in scripts.items()}

    def client_or_raise(self) -> Redis:
        if self.client is None or not self.reachable:
            raise StoreUnavailable("redis store unavailable")
        return self.client

    async def script(self, name: str, keys: list[str], *args: str) -> Any:
        """Run a registered script (EVALSHA, reloaded after NOSCRIPT by redis-py)."""
        client = self.client_or_raise()
        script = self._scripts[name]
        return await self.call(lambda: script(keys=keys, args=args, client=client))

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one command, bounded; errors become ``StoreUnavailable``."""
        try:
            async with asyncio.timeout(self.deadline):
                await self._slots.acquire()
        except TimeoutError:  # overloaded here, which says nothing about Redis
            raise StoreUnavailable("redis store busy") from None
        try:
            async with asyncio.timeout(self.deadline):
                return await make()
        except LOST as e:
            await self.set_reachable(False, e)
            raise StoreUnavailable("redis store unavailable") from e
        except rexc.RedisError as e:  # e.g. OOM: Redis is up but refuses the write
            log.warning("redis store: command failed: %s", e)
            raise StoreUnavailable("redis store refused the command") from e
        finally:
            self._slots.release()

    async def wait_health(self, healthy: bool, timeout: float) -> bool:
        """Wait until ``reachable`` has the given value; False if ``timeout`` passed first."""
        async with self._health:
            try:
                async with asyncio.timeout(timeout):
                    await self._health.wait_for(lambda: self.reachable == healthy)
            except TimeoutError:
                return False
        return True

    async def set_reachable(
        self, reachable: bool, error: BaseException | None, *, log_it: bool = True
    ) -> None:
        """Record a change of health, warn once per outage and once on recovery."""
        if error is not None:
            self.last_error = error
        if reachable == self.reachable:
            return
        self.reachable = reachable
        now = time.monotonic()
        if not reachable:
            self._down_since = now
            if log_it:
                log.warning(
                    "redis store unavailable (%s); serving %d cached assignments, "
                    "new placements fail until it is back",
                    error,
                    self._cached(),
                )
        else:
            if self._down_since is not None and log_it:
                log.warning(
                    "redis store available again after %.1fs (%d assignments)",
                    now - self._down_since,
                    self._cached(),
                )
            self._down_since = None
        async with self._health:
            self._health.notify_all()
