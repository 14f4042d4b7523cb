"""The assignment store: the sticky session -> instance map and its fencing epochs.

The map is the source of truth once a session is placed. Implementations: in-memory
(one process) and Redis (shared by many processes and replicas). Reads on the request
hot path go through ``cached()``, which is synchronous and never does I/O; every
implementation keeps a full local copy of the map for that.

Two things serve failover:

- ``Assignment.moving``: set by ``move(..., moving=True)`` together with the new epoch,
  cleared by ``settle(session, epoch)`` once the session is ready on its new instance,
  without changing the epoch (the epoch is the fencing token handed to restore calls).
  Every router's local copy follows the flag, and ``add_listener`` callbacks hear of every
  change to the local copy, so a request held in any router can be released.
- A leadership lease with a fencing token (``LeaderLease``), so that exactly one router
  runs failover.

``AssignmentStore`` is the whole interface; the narrower protocols below it (``Assignments``,
``LeaderLease``, ``DrainFlags``, ``WorkerStatsStore``) say what each component uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a session lives. ``epoch`` grows on every move: it is the fencing token.

    ``moving`` is True from a ``move(..., moving=True)`` until ``settle`` at the same epoch:
    the session is being restored on ``instance`` and requests for it should wait."""

    session: str
    instance: str
    epoch: int
    moving: bool = False

    def supersedes(self, other: Assignment) -> bool:
        """True when ``self`` is a later state of the session than ``other``: a higher
        epoch, or the same epoch settled where ``other`` was still moving. Within one
        epoch the only change is moving -> settled, never back."""
        if self.epoch != other.epoch:
            return self.epoch > other.epoch
        return other.moving and not self.moving


Listener = Callable[[str, Assignment | None], None]
"""``listener(session, assignment_or_None)``: called synchronously (it must not block nor
await) after the local copy changed; ``cached(session)`` already returns the new value."""


class StaleEpoch(Exception):
    """A move was asked against an epoch that is no longer current."""

    def __init__(self, current: Assignment | None) -> None:
        super().__init__("stale epoch")
        self.current = current


# -- what each component needs: narrow protocols, and their union ---------------------------
#
# A component takes the narrowest one it uses (the leader election takes a ``LeaderLease``,
# the stats publisher a ``WorkerStatsStore``), so a reader sees what it depends on and a
# test can hand it a small fake. ``AssignmentStore`` is all of them: what a store provides.


class Assignments(Protocol):
    """The sticky map: hot-path reads from the local copy, atomic writes, change listeners."""

    def cached(self, session: str) -> Assignment | None:
        """The locally known assignment, without I/O (hot path)."""

    def counts(self) -> Mapping[str, int]:
        """Sessions per instance, from the local copy (placement input)."""

    def __len__(self) -> int: ...

    async def get(self, session: str) -> Assignment | None:
        """The authoritative assignment (may do I/O)."""

    async def create_if_absent(self, session: str, instance: str) -> Assignment:
        """Assign ``session`` to ``instance`` at epoch 1 unless it is already assigned;
        returns the assignment that won (first writer wins across all routers)."""

    async def move(
        self,
        session: str,
        instance: str,
        expected_epoch: int | None,
        *,
        moving: bool = False,
    ) -> Assignment:
        """Reassign with epoch + 1 and the given ``moving`` flag. With ``expected_epoch``,
        raise ``StaleEpoch`` unless it is the current epoch (compare-and-set)."""

    async def settle(self, session: str, epoch: int) -> Assignment | None:
        """Clear ``moving`` if the session's current epoch is ``epoch`` (compare-and-set;
        the epoch is unchanged). Returns the settled assignment (also when it was not
        moving), or None when the session is gone or at another epoch. Never raises
        ``StaleEpoch``."""

    async def remove(self, session: str, expected_epoch: int | None = None) -> bool:
        """Forget a session; False when it was not assigned."""

    async def list(self, instance: str | None = None) -> list[Assignment]:
        """All assignments, or those of one instance."""

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(session, assignment_or_None)`` after every change of the local
        copy: this process's own writes and, for shared stores, every change learned from
        other processes (including differences found by a re-read after a reconnect; not
        the initial load). Adding the same listener twice calls it once."""

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; no error when it was not added."""


class LeaderLease(Protocol):
    """One leadership lease shared by every router, with a fencing token."""

    async def acquire_leadership(self, holder: str, ttl: float) -> int | None:
        """Take the leadership lease for ``ttl`` seconds if nobody holds it, or extend it
        if ``holder`` already does. Returns the fencing token (the same while ``holder``
        keeps it; a higher one on every takeover, including a re-take by the same holder
        after the lease expired or was released), or None when another holder has it."""

    async def renew_leadership(self, holder: str, token: int, ttl: float) -> bool:
        """Extend the lease to ``ttl`` seconds from now if ``holder`` still holds it with
        ``token``; False when it was lost (expired, released or taken over)."""

    async def release_leadership(self, holder: str, token: int) -> None:
        """Give up the lease if ``holder`` holds it with ``token``; otherwise nothing."""

    async def leader(self) -> str | None:
        """The current lease holder, or None."""


class DrainFlags(Protocol):
    """The instances operators drained, shared by every router."""

    async def set_drained(self, instance: str, drained: bool) -> None:
        """Mark an instance drained by an operator (shared by every router), or not."""

    async def drained(self) -> frozenset[str]:
        """The instances operators drained."""


class WorkerStatsStore(Protocol):
    """Each worker process's latest counters, for the process that serves metrics."""

    async def put_worker_stats(self, worker: int, payload: str, ttl: float) -> None:
        """Publish one worker process's counters (``router.workerstats``), expiring."""

    async def worker_stats(self, workers: Iterable[int]) -> dict[int, str | None]:
        """The latest published counters of these workers (None: none, or expired)."""


class AssignmentStore(Assignments, LeaderLease, DrainFlags, WorkerStatsStore, Protocol):
    """What the router needs from a store: every part above, and its lifecycle. Write
    methods are atomic."""

    async def start(self) -> None:
        """Connect and load the map."""

    async def close(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """False while the backing service is unreachable."""
