"""Assignment stores."""

from router.store.base import Assignment, AssignmentStore, StaleEpoch
from router.store.memory import MemoryStore

__all__ = ["Assignment", "AssignmentStore", "MemoryStore", "StaleEpoch"]
