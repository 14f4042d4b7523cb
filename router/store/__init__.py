"""Assignment stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router.store.base import (
    Assignment,
    Assignments,
    AssignmentStore,
    DrainFlags,
    LeaderLease,
    Listener,
    StaleEpoch,
    WorkerStatsStore,
)
from router.store.memory import MemoryStore

if TYPE_CHECKING:
    from router.store.redis import RedisStore

__all__ = [
    "Assignment",
    "AssignmentStore",
    "Assignments",
    "DrainFlags",
    "LeaderLease",
    "Listener",
    "MemoryStore",
    "RedisStore",
    "StaleEpoch",
    "WorkerStatsStore",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing redis-py costs ~150 ms, which the in-memory store and the config
    # loader (check-config) do not need to pay.
    if name == "RedisStore":
        from router.store.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
