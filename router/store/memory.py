"""In-memory assignment store: one router process, nothing to install, nothing durable."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from router.store.base import Assignment, AssignmentStore, Listener, StaleEpoch

log = logging.getLogger(__name__)


class MemoryStore:
    """A dict and per-instance counts. Every write is atomic because it never awaits.

    Listeners hear of every write (there is no other process). The leadership lease is a
    real lease kept in memory (one holder at a time, expiring after its TTL, a token that
    grows on every takeover), so code written for Redis behaves the same here; with one
    router and one holder name, that holder always wins and keeps token 1.
    """

    def __init__(self) -> None:
        self._map: dict[str, Assignment] = {}
        self._by_instance: defaultdict[str, set[str]] = defaultdict(set)
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._listeners: dict[Listener, None] = {}  # ordered set
        self._leader: str | None = None
        self._leader_token = 0  # the last token handed out
        self._drained: set[str] = set()
        self._worker_stats: dict[int, str] = {}
        self._leader_until = 0.0  # time.monotonic() deadline of the lease

    def __repr__(self) -> str:
        leader = self._leader if self._leader is not None and time.monotonic() < self._leader_until else None
        return (
            f"<MemoryStore sessions={len(self._map)} instances={len(self._counts)} "
            f"leader={leader!r} drained={sorted(self._drained)}>"
        )

    def cached(self, session: str) -> Assignment | None:
        return self._map.get(session)

    def counts(self) -> Mapping[str, int]:
        return self._counts

    def __len__(self) -> int:
        return len(self._map)

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self, session: str) -> Assignment | None:
        return self._map.get(session)

    async def create_if_absent(self, session: str, instance: str) -> Assignment:
        current = self._map.get(session)
        if current is not None:
            return current
        assignment = Assignment(session, instance, 1)
        self._put(assignment)
        self._notify(session, assignment)
        return assignment

    async def move(
        self,
        session: str,
        instance: str,
        expected_epoch: int | None,
        *,
        moving: bool = False,
    ) -> Assignment:
        current = self._map.get(session)
        if expected_epoch is not None and (current is None or current.epoch != expected_epoch):
            raise StaleEpoch(current)
        if current is not None:
            self._drop(current)
        epoch = (current.epoch if current else 0) + 1
        assignment = Assignment(session, instance, epoch, moving)
        self._put(assignment)
        self._notify(session, assignment)
        return assignment

    async def settle(self, session: str, epoch: int) -> Assignment | None:
        current = self._map.get(session)
        if current is None or current.epoch != epoch:
            return None
        if not current.moving:
            return current
        settled = Assignment(session, current.instance, epoch)
        self._map[session] = settled  # same instance: counts and index unchanged
        self._notify(session, settled)
        return settled

    async def remove(self, session: str, expected_epoch: int | None = None) -> bool:
        current = self._map.get(session)
        if current is None:
            return False
        if expected_epoch is not None and current.epoch != expected_epoch:
            raise StaleEpoch(current)
        self._drop(current)
        del self._map[session]
        self._notify(session, None)
        return True

    async def list(self, instance: str | None = None) -> list[Assignment]:
        if instance is None:
            return list(self._map.values())
        return [self._map[s] for s in self._by_instance.get(instance, ())]

    # -- listeners --------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners[listener] = None

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.pop(listener, None)

    def _notify(self, session: str, assignment: Assignment | None) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(session, assignment)
            except Exception:  # a bug in one listener must not break the write
                log.exception("memory store: listener failed")

    # -- leadership -------------------------------------------------------------------

    async def acquire_leadership(self, holder: str, ttl: float) -> int | None:
        _check_ttl(ttl)
        now = time.monotonic()
        if self._leader is not None and now >= self._leader_until:
            self._leader = None  # expired
        if self._leader is None:
            self._leader = holder
            self._leader_token += 1
        elif self._leader != holder:
            return None
        self._leader_until = now + ttl
        return self._leader_token

    async def renew_leadership(self, holder: str, token: int, ttl: float) -> bool:
        _check_ttl(ttl)
        now = time.monotonic()
        if self._leader != holder or self._leader_token != token or now >= self._leader_until:
            return False
        self._leader_until = now + ttl
        return True

    async def release_leadership(self, holder: str, token: int) -> None:
        if self._leader == holder and self._leader_token == token:
            self._leader = None

    async def leader(self) -> str | None:
        if self._leader is not None and time.monotonic() >= self._leader_until:
            self._leader = None
        return self._leader

    # -- drain flags ------------------------------------------------------------------

    async def set_drained(self, instance: str, drained: bool) -> None:
        if drained:
            self._drained.add(instance)
        else:
            self._drained.discard(instance)

    async def drained(self) -> frozenset[str]:
        return frozenset(self._drained)

    # -- worker stats (one process: only for the interface) ---------------------------

    async def put_worker_stats(self, worker: int, payload: str, ttl: float) -> None:
        self._worker_stats[worker] = payload

    async def worker_stats(self, workers: Iterable[int]) -> dict[int, str | None]:
        return {w: self._worker_stats.get(w) for w in workers}

    # -- the map ----------------------------------------------------------------------

    def _put(self, assignment: Assignment) -> None:
        self._map[assignment.session] = assignment
        self._by_instance[assignment.instance].add(assignment.session)
        self._counts[assignment.instance] += 1

    def _drop(self, assignment: Assignment) -> None:
        instance = assignment.instance
        sessions = self._by_instance[instance]
        sessions.discard(assignment.session)
        if not sessions:  # like Redis: an instance with no session has no count
            del self._by_instance[instance]
            del self._counts[instance]
        else:
            self._counts[instance] -= 1


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError("lease ttl must be positive")


if TYPE_CHECKING:  # mypy proves MemoryStore is an AssignmentStore

    def _conforms(store: MemoryStore) -> AssignmentStore:
        return store
