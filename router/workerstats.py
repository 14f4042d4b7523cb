"""``listen.workers: N``: one ``/metrics`` for all workers.

Each worker counts its own requests (plain ints, nothing shared on the data path). Workers
1..N-1 publish a snapshot of their counters to Redis every second (``P workers:<i>``, expiring
after a few seconds, so a dead worker's figures vanish); worker 0, which serves the admin
port, reads them every second and its collector adds them to its own. Figures are at most
about two seconds old; a restarted worker starts from zero again (Prometheus' ``rate`` reads
that as a counter reset, as it does for any restarted process).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from router.clock import Clock
from router.errors import StoreUnavailable
from router.stats import BUCKETS, RequestStats
from router.store.base import WorkerStatsStore
from router.tasks import Tasks

log = logging.getLogger("wa_router.workers")

INTERVAL = 1.0
TTL = 5.0


@dataclass(slots=True)
class PeerStats:
    """Another worker's counters, as last published."""

    held: int = 0
    stats: dict[str, RequestStats] = field(default_factory=dict)


def encode(held: int, sources: Iterable[tuple[str, RequestStats]]) -> str:
    return json.dumps({
        "held": held,
        "stats": {name: [{str(c): n for c, n in s.codes.items()}, s.buckets, s.count, s.total]
                  for name, s in sources},
    }, separators=(",", ":"))  # fmt: skip


def decode(text: str) -> PeerStats:
    """A published snapshot; malformed parts are skipped (never raises on bad data)."""
    out = PeerStats()
    try:
        doc = json.loads(text)
        out.held = int(doc.get("held", 0))
        for name, (codes, buckets, count, total) in doc.get("stats", {}).items():
            s = RequestStats()
            s.codes = {int(c): int(n) for c, n in codes.items()}
            if len(buckets) == len(BUCKETS) + 1:
                s.buckets = [int(b) for b in buckets]
            s.count, s.total = int(count), float(total)
            out.stats[str(name)] = s
    except (ValueError, TypeError, AttributeError) as e:
        log.warning("worker stats: ignoring a malformed snapshot (%s)", e)
    return out


def merged(own: Iterable[tuple[str, RequestStats]], peers: Iterable[PeerStats]) -> Iterator[tuple[str, RequestStats]]:
    """``own`` with every peer's figures of the same name added (names only peers have
    are kept too: an instance another worker knows)."""
    peers = list(peers)
    seen = set()
    for name, stats in own:
        seen.add(name)
        yield name, _sum(stats, (p.stats[name] for p in peers if name in p.stats))
    extra: dict[str, list[RequestStats]] = {}
    for p in peers:
        for name, s in p.stats.items():
            if name not in seen:
                extra.setdefault(name, []).append(s)
    for name, group in extra.items():
        yield name, _sum(group[0], group[1:])


def _sum(first: RequestStats, rest: Iterable[RequestStats]) -> RequestStats:
    rest = list(rest)
    if not rest:
        return first
    out = RequestStats()
    for s in (first, *rest):
        for code, n in s.codes.items():
            out.codes[code] = out.codes.get(code, 0) + n
        for i, n in enumerate(s.buckets):
            out.buckets[i] += n
        out.count += s.count
        out.total += s.total
    return out


class WorkerStats:
    """Publishes (worker > 0) or gathers (worker 0) the snapshots through the store."""

    def __init__(self, store: WorkerStatsStore, index: int, workers: int,
                 sources: Callable[[], Iterable[tuple[str, RequestStats]]],
                 held: Callable[[], int], clock: Clock) -> None:
        self._store = store
        self.index = index
        self.workers = workers
        self._sources = sources
        self._held = held
        self.peers: list[PeerStats] = []
        self._clock = clock
        self.tasks = Tasks("worker-stats")

    def __repr__(self) -> str:
        return f"<WorkerStats worker {self.index} of {self.workers}, {len(self.peers)} peers>"

    def start(self) -> None:
        self.tasks.spawn(self._run(), name="worker-stats")

    async def stop(self) -> None:
        await self.tasks.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self._once()
            except StoreUnavailable:
                pass  # Redis is down: the last figures stay (the store logs the outage)
            except Exception:
                log.exception("worker stats: round failed")
            await self._clock.sleep(INTERVAL)

    async def _once(self) -> None:
        if self.index == 0:
            texts = await self._store.worker_stats(range(1, self.workers))
            self.peers = [decode(t) for t in texts.values() if t]
        else:
            payload = encode(self._held(), self._sources())
            await self._store.put_worker_stats(self.index, payload, TTL)
