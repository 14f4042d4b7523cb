"""In-memory assignment store: one router process, nothing to install, nothing durable."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from router.store.base import Assignment, StaleEpoch


class MemoryStore:
    """A dict and per-instance counts. Every write is atomic because it never awaits."""

    def __init__(self) -> None:
        self._map: dict[str, Assignment] = {}
        self._by_instance: defaultdict[str, set[str]] = defaultdict(set)
        self._counts: defaultdict[str, int] = defaultdict(int)

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
        return assignment

    async def move(self, session: str, instance: str, expected_epoch: int | None) -> Assignment:
        current = self._map.get(session)
        if expected_epoch is not None and (current is None or current.epoch != expected_epoch):
            raise StaleEpoch(current)
        if current is not None:
            self._drop(current)
        assignment = Assignment(session, instance, (current.epoch if current else 0) + 1)
        self._put(assignment)
        return assignment

    async def remove(self, session: str, expected_epoch: int | None = None) -> bool:
        current = self._map.get(session)
        if current is None:
            return False
        if expected_epoch is not None and current.epoch != expected_epoch:
            raise StaleEpoch(current)
        self._drop(current)
        del self._map[session]
        return True

    async def list(self, instance: str | None = None) -> list[Assignment]:
        if instance is None:
            return list(self._map.values())
        return [self._map[s] for s in self._by_instance.get(instance, ())]

    def _put(self, assignment: Assignment) -> None:
        self._map[assignment.session] = assignment
        self._by_instance[assignment.instance].add(assignment.session)
        self._counts[assignment.instance] += 1

    def _drop(self, assignment: Assignment) -> None:
        self._by_instance[assignment.instance].discard(assignment.session)
        self._counts[assignment.instance] -= 1
