"""Leader lease: with several routers on one Redis, exactly one runs failover, restores,
stale-copy stops and rebalancing. All of them route and check health."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import RouterError
from router.events import EventLog
from router.store.base import LeaderLease
from router.tasks import Tasks

log = logging.getLogger("wa_router.leader")


class Leadership:
    """Acquire and renew a lease every ttl/3; step down at once when a renewal fails."""

    def __init__(self, store: LeaderLease, config: ConfigHolder, events: EventLog,
                 clock: Clock, on_gain: Callable[[], None]) -> None:
        self.store = store
        self._config = config
        self.events = events
        self._clock = clock
        self.on_gain = on_gain
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.token: int | None = None
        self.tasks = Tasks("leader")

    def __repr__(self) -> str:
        return f"<Leadership {self.holder} token={self.token}>"

    @property
    def ttl(self) -> float:
        return self._config.current.failover.leader_ttl

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def start(self) -> None:
        self.tasks.spawn(self._run(), name="leader-lease")

    async def stop(self) -> None:
        await self.tasks.stop()
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
            await self._clock.sleep(self.ttl / 3)

    def _lose(self, why: str) -> None:
        self.token = None
        self.events.emit("leader_lost", f"this router ({self.holder}) is no longer the leader: {why}",
                         severity="warning")
