"""Choosing an instance for a session and writing the choice, as one step.

The choice reads the local counts, which include a write only once it has returned (with
Redis, a round trip later). New sessions and moves are therefore placed under one lock, so
that concurrent placements see each other: a whole instance's sessions moved at once would
otherwise all be placed against the same counts, past the balance bound and max_sessions.
"""

from __future__ import annotations

import asyncio

from router.config.holder import ConfigHolder
from router.errors import NoInstance
from router.instances import Fleet
from router.store.base import Assignment, Assignments


class Placer:
    """Consistent hashing with bounded loads over the instances that can take sessions."""

    def __init__(self, config: ConfigHolder, store: Assignments, fleet: Fleet) -> None:
        self._config = config
        self._store = store
        self._fleet = fleet
        self.lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Placer {len(self._fleet)} instances, locked={self.lock.locked()}>"

    def choose(self, session: str, exclude: str | None = None) -> str | None:
        """The instance a session should go to now (None: no instance has room). Call it
        under ``lock`` and write the result before releasing it."""
        eligible = frozenset(i.name for i in self._fleet if i.available and i.name != exclude)
        return self._fleet.ring.place(session, self._store.counts(), eligible,
                                      self._config.current.placement.balance_factor)

    async def place_new(self, session: str) -> Assignment:
        """Place a session seen for the first time (the store's create-if-absent decides
        between routers). ``NoInstance`` when no instance has room."""
        async with self.lock:
            name = self.choose(session)
            if name is None:
                raise NoInstance("no healthy instance has room for a new session")
            return await self._store.create_if_absent(session, name)
