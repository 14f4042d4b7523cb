"""The assignment store: the sticky session -> instance map and its fencing epochs.

The map is the source of truth once a session is placed. Implementations: in-memory
(one process) and Redis (shared by many processes and replicas). Reads on the request
hot path go through ``cached()``, which is synchronous and never does I/O; every
implementation keeps a full local copy of the map for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a session lives. ``epoch`` grows on every move: it is the fencing token."""

    session: str
    instance: str
    epoch: int


class StaleEpoch(Exception):
    """A move was asked against an epoch that is no longer current."""

    def __init__(self, current: Assignment | None) -> None:
        super().__init__("stale epoch")
        self.current = current


class AssignmentStore(Protocol):
    """What the router needs from a store. Write methods are atomic."""

    def cached(self, session: str) -> Assignment | None:
        """The locally known assignment, without I/O (hot path)."""

    def counts(self) -> Mapping[str, int]:
        """Sessions per instance, from the local copy (placement input)."""

    def __len__(self) -> int: ...

    async def start(self) -> None:
        """Connect and load the map."""

    async def close(self) -> None: ...

    async def get(self, session: str) -> Assignment | None:
        """The authoritative assignment (may do I/O)."""

    async def create_if_absent(self, session: str, instance: str) -> Assignment:
        """Assign ``session`` to ``instance`` at epoch 1 unless it is already assigned;
        returns the assignment that won (first writer wins across all routers)."""

    async def move(self, session: str, instance: str, expected_epoch: int | None) -> Assignment:
        """Reassign with epoch + 1. With ``expected_epoch``, raise ``StaleEpoch`` unless it
        is the current epoch (compare-and-set)."""

    async def remove(self, session: str, expected_epoch: int | None = None) -> bool:
        """Forget a session; False when it was not assigned."""

    async def list(self, instance: str | None = None) -> list[Assignment]:
        """All assignments, or those of one instance."""

    @property
    def healthy(self) -> bool:
        """False while the backing service is unreachable."""
