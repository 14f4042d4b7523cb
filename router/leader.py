"""Leader lease: with several routers on one Redis, exactly one runs failover, restores,
stale-copy stops and rebalancing. All of them route and check health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from router.errors import RouterError
from router.events import EventLog
from router.store.base import LeaderLease

log = logging.getLogger("wa_router.leader")


class Leadership:
    """Acquire and renew a lease every ttl/3; step down at once when a renewal fails."""

    def __init__(self, store: LeaderLease, ttl: float, events: EventLog,
                 on_gain: Callable[[], None]) -> None:
        self.store = store
        self.ttl = ttl
        self.events = events
        self.on_gain = on_gain
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.token: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.token is not None:
            with contextlib.suppress(RouterError):
                await self.store.release_leadership(self.holder, self.token)
            self.token = None

    async def _run(self) -> None:
        while True:
            try:
                if self.token is None:
                    token = await self.store.acquire_leadership(self.holder, self.ttl)
                    if token is not None:
                        self.token = token
                        self.events.emit("leader", f"this router ({self.holder}) is the leader",
                                         data={"token": token})
                        self.on_gain()
                elif not await self.store.renew_leadership(self.holder, self.token, self.ttl):
                    self._lose("lease lost")
            except RouterError as e:
                if self.token is not None:
                    self._lose(e.message)
            except Exception:
                log.exception("leader lease")
                if self.token is not None:
                    self._lose("error")
            await asyncio.sleep(self.ttl / 3)

    def _lose(self, why: str) -> None:
        self.token = None
        self.events.emit("leader_lost", f"this router ({self.holder}) is no longer the leader: {why}",
                         severity="warning")
