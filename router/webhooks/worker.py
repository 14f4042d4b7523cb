"""Delivery for one target: read from its queue, send, retry, dead-letter, acknowledge.

Tasks (all survive a failing Redis or target: they log, back off and go on):

- **keeper**: creates the consumer group, holds the lease (``per_session``), reclaims
  entries other consumers left pending (``XAUTOCLAIM``, idle > ``claim_idle``), and every
  ``claim_idle / 3`` resets the idle time of the entries it works on (``XCLAIM JUSTID``), so
  that an entry waiting minutes for its retry is never mistaken for an orphan.
- **reader**: ``XREADGROUP`` new entries while fewer than ``max_held`` entries (and
  ``max_held_bytes``) are held in memory: a target that is down builds its backlog in Redis,
  not here.
- **dispatcher**: starts deliveries, at most ``concurrency`` in flight. With ``per_session``
  ordering each session is a *lane*: only its head is ever sent, and the next one goes
  only after the head is delivered or dead. A lane whose head is waiting for a retry waits;
  other lanes (and events without a session) are not affected.
- **finisher**: batches acknowledgements and dead-list writes (one ``MULTI`` per round trip)
  and, at most once a second, trims delivered entries from the stream.

Ordering across router processes: with ``per_session`` only the holder of the target's
lease (``P wh:K:owner``, TTL ``claim_idle``, renewed every second) reads the stream, so
every session's events pass through one process in stream order. A new holder first
claims everything the previous one left pending (in id order), then reads new entries.
A graceful stop releases the lease and its entries at once; after a crash, another process
takes over within ``claim_idle``. With ``ordering: none`` every process reads (the group
spreads entries) and idle entries are reclaimed by anyone.

Retries: after a failed attempt (connect error, timeout, non-2xx outside
``no_retry_statuses``) the entry waits ``retry_delay`` and is tried again, up to
``retries.attempts`` attempts; then, or at once for a ``no_retry_statuses`` answer, it goes
to the dead list. The breaker (``schedule.Breaker``) pauses the whole target after
consecutive failures; waiting entries do not use up attempts meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.backoff import Backoff
from router.config.model import Ordering, RetryConfig, WebhookTarget
from router.errors import StoreUnavailable
from router.tasks import Tasks, cancel_and_wait
from router.transport import Transport
from router.webhooks.base import LEASE_ACQUIRED, LEASE_OTHER, Queue
from router.webhooks.delivery import Result, post
from router.webhooks.model import Counters, DeadRecord, Entry
from router.webhooks.schedule import Breaker, exhausted, retry_delay

log = logging.getLogger(__name__)

_FINISH_BATCH = 1000
_RECENT_IDS = 50_000  # delivered event ids remembered to count duplicates
_TRIM_INTERVAL = 1.0
_CLEANUP_INTERVAL = 300.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    retries: RetryConfig = field(default_factory=RetryConfig)
    no_retry_statuses: frozenset[int] = frozenset({400, 401, 403, 404, 422})
    ordering: Ordering = "per_session"
    concurrency: int = 64
    max_held: int = 10_000
    max_held_bytes: int = 64 * 1024 * 1024
    request_timeout: float = 10.0
    claim_idle: float = 15.0
    read_count: int = 256
    read_block: float = 1.0
    breaker_threshold: int = 10
    breaker_base: float = 1.0
    breaker_max: float = 30.0


DeadCallback = Callable[[str, Sequence[DeadRecord]], None]
# (target key, up, last error): the breaker opened the first time (False) or closed (True)
HealthCallback = Callable[[str, bool, str | None], None]


class TargetWorker:
    def __init__(
        self,
        key: str,
        target: WebhookTarget,
        queue: Queue,
        settings: WorkerSettings,
        http: Transport,
        counters: Counters,
        on_dead: DeadCallback,
        *,
        on_health: HealthCallback | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.key = key
        self.target = target
        self.settings = settings
        self._queue = queue
        self._http = http
        self._counters = counters
        self._on_dead = on_dead
        self._on_health = on_health
        self._rand = rand
        self.breaker = Breaker(settings.breaker_threshold, settings.breaker_base, settings.breaker_max)

        self._held: dict[str, Entry] = {}  # read and not yet acknowledged, by queue id
        self._held_bytes = 0
        self._lanes: dict[str, deque[Entry]] = {}  # session -> its entries, head first
        self._ready: deque[Entry] = deque()
        self._timers: list[tuple[float, int, Entry]] = []  # (due, seq, entry): retries
        self._seq = itertools.count()
        self._inflight: set[asyncio.Task[None]] = set()
        self._finishing: list[tuple[str, DeadRecord | None]] = []
        self._recent: dict[str, None] = {}

        self._wake = asyncio.Event()  # dispatcher: something changed
        self._finish_wake = asyncio.Event()
        self._finished = asyncio.Event()  # finisher: nothing left to write
        self._finished.set()
        self._can_read = asyncio.Event()
        self._active = False  # may read (lease held, or no lease needed) and claimed
        # An unfinished claim sweep: (cursor, min idle seconds); reading waits for it.
        self._claim_from: tuple[str, float] | None = None
        self._stopping = False  # no new reads or deliveries
        self._halt = False  # dispatcher and finisher exit
        self._trim_due = False
        # Stopped in two phases: readers first, writers once deliveries have finished.
        self._readers = Tasks(f"webhooks-{key}-read")
        self._writers = Tasks(f"webhooks-{key}-write")
        self.attempts = 0  # HTTP attempts made (for tests and status)

    # -- lifecycle --------------------------------------------------------------------

    def __repr__(self) -> str:  # the target's key, never its URL (it may hold a secret)
        return (f"<TargetWorker {self.key} breaker={self.breaker.state} held={len(self._held)} "
                f"inflight={len(self._inflight)} retrying={len(self._timers)}>")

    @property
    def lease_mode(self) -> bool:
        return self.settings.ordering == "per_session"

    def start(self) -> None:
        name = f"webhooks-{self.key}"
        self._readers.spawn(self._keep(), name=f"{name}-keeper")
        self._readers.spawn(self._read(), name=f"{name}-reader")
        self._writers.spawn(self._dispatch(), name=f"{name}-dispatcher")
        self._writers.spawn(self._finish(), name=f"{name}-finisher")

    def update(self, target: WebhookTarget, settings: WorkerSettings) -> None:
        """New target options (hmac_key) and settings apply to the next decisions."""
        self.target = target
        self.settings = settings
        self.breaker.threshold = settings.breaker_threshold
        self.breaker.base = settings.breaker_base
        self.breaker.max_open = settings.breaker_max
        self._gate()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop reading, let deliveries in flight finish (up to ``grace``), write what was
        decided, hand back the rest (lease and entries) for another consumer at once."""
        self._stopping = True
        self._gate()
        self._wake.set()
        # A blocked XREADGROUP is cancelled rather than waited for (up to read_block): in
        # the rare case its answer was already on the way, those entries sit in our PEL
        # until a claim takes them (at once for a new lease holder, else after claim_idle).
        await self._readers.stop()
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=grace)
            await cancel_and_wait(late)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._finished.wait()
        self._halt = True
        self._wake.set()
        self._finish_wake.set()
        await self._writers.stop()
        undecided = list(self._held)  # not acknowledged (decided or not)
        try:
            async with asyncio.timeout(2.0):
                if undecided:
                    await self._queue.release(self.key, undecided)
                if self.lease_mode:
                    await self._queue.unlease(self.key)
        except (StoreUnavailable, TimeoutError):
            log.warning("webhooks %s: could not hand back %d entries at stop; they are "
                        "reclaimed after %gs", self.target.url, len(undecided), self.settings.claim_idle)

    def abort(self) -> None:
        """Cancel everything at once, no I/O (a crash, as far as Redis can tell)."""
        self._stopping = self._halt = True
        self._readers.abort()
        self._writers.abort()
        for t in self._inflight:
            t.cancel()
        self._deactivate()
        self._finishing.clear()

    def status(self) -> dict[str, Any]:
        return {
            "url": self.target.url,
            "key": self.key,
            "active": self._active,
            "held": len(self._held),
            "inflight": len(self._inflight),
            "ready": len(self._ready),
            "retrying": len(self._timers),
            "sessions_waiting": sum(1 for lane in self._lanes.values() if len(lane) > 1),
            "breaker": self.breaker.state,
            "attempts": self.attempts,
        }

    # -- gate for the reader ----------------------------------------------------------

    def _room(self) -> int:
        if self._held_bytes >= self.settings.max_held_bytes:
            return 0
        return max(0, self.settings.max_held - len(self._held))

    def _gate(self) -> None:
        if self._active and self._claim_from is None and not self._stopping and self._room() > 0:
            self._can_read.set()
        else:
            self._can_read.clear()

    # -- keeper -----------------------------------------------------------------------

    async def _keep(self) -> None:
        backoff = Backoff()
        prepared = False
        last_touch = last_claim = last_trim = 0.0
        last_cleanup = time.monotonic()
        # Loops test their flag as well as relying on cancellation: a cancel racing with a
        # timeout inside redis-py can surface as an ordinary error (seen in tests).
        while not self._stopping:
            s = self.settings
            tick = min(1.0, s.claim_idle / 3)
            try:
                if not prepared:
                    await self._queue.prepare(self.key)
                    prepared = True
                now = time.monotonic()
                if self.lease_mode:
                    got = await self._queue.lease(self.key, s.claim_idle)
                    if got == LEASE_OTHER:
                        if self._active:
                            log.warning("webhooks %s: delivery lease lost", self.target.url)
                            self._deactivate()
                    elif got == LEASE_ACQUIRED or not self._active:
                        # The previous holder is gone: everything it left is ours, now,
                        # and comes before anything new (reading waits for the sweep).
                        self._active = True
                        self._claim_from = ("0-0", 0.0)
                elif not self._active:
                    self._active = True
                    self._claim_from = ("0-0", s.claim_idle)
                if self._active and self._claim_from is None and now - last_claim >= s.claim_idle / 2:
                    self._claim_from = ("0-0", s.claim_idle)
                if self._active and self._claim_from is not None:
                    await self._claim()
                    last_claim = now
                if self._held and now - last_touch >= s.claim_idle / 3:
                    await self._queue.touch(self.key, list(self._held))
                    last_touch = now
                if self._trim_due and now - last_trim >= _TRIM_INTERVAL:
                    # Acknowledged entries leave the stream (never unread or pending ones).
                    self._trim_due = False
                    last_trim = now
                    await self._queue.trim(self.key)
                if now - last_cleanup >= _CLEANUP_INTERVAL:
                    last_cleanup = now
                    await self._queue.cleanup(self.key)
                backoff.reset()
                self._gate()
                await asyncio.sleep(tick)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as e:
                log.debug("webhooks %s: keeper: %s", self.target.url, e)
                await backoff.sleep()
            except Exception:
                log.exception("webhooks %s: keeper failed", self.target.url)
                await backoff.sleep()

    async def _claim(self) -> None:
        """Continue the sweep over entries others left pending (``_claim_from``)."""
        self._gate()
        while self._claim_from is not None:
            cursor, min_idle = self._claim_from
            room = self._room()
            if room <= 0:
                return  # continue at the next tick, reading stays paused until then
            cursor, entries = await self._queue.claim(self.key, min_idle, cursor, min(room, 256))
            for e in entries:
                self._admit(e)
            self._claim_from = None if cursor == "0-0" else (cursor, min_idle)
        self._gate()

    def _deactivate(self) -> None:
        """Lease lost: forget everything held (the new holder has claimed it)."""
        self._active = False
        self._claim_from = None
        self._held.clear()
        self._held_bytes = 0
        self._lanes.clear()
        self._ready.clear()
        self._timers.clear()
        self._gate()

    # -- reader -----------------------------------------------------------------------

    async def _read(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            await self._can_read.wait()
            s = self.settings
            count = min(s.read_count, self._room())
            if count <= 0 or self._stopping:  # (COUNT 0 would mean "no limit")
                self._gate()
                continue
            try:
                entries = await self._queue.read(self.key, count, s.read_block)
            except StoreUnavailable as err:
                log.debug("webhooks %s: read: %s", self.target.url, err)
                await backoff.sleep()
                continue
            except Exception:
                log.exception("webhooks %s: read failed", self.target.url)
                await backoff.sleep()
                continue
            backoff.reset()
            if not self._active or self._stopping:  # lease lost, or stopping, meanwhile
                with contextlib.suppress(StoreUnavailable):
                    await self._queue.release(self.key, [e.qid for e in entries])
                continue
            for e in entries:
                self._admit(e)

    def _admit(self, e: Entry) -> None:
        if e.qid in self._held:
            return  # our own entry, claimed back (e.g. idle while waiting for a retry)
        self._held[e.qid] = e
        self._held_bytes += len(e.body)
        if self.lease_mode and e.session is not None:
            lane = self._lanes.get(e.session)
            if lane is not None:
                lane.append(e)  # waits for the entries before it
                self._gate()
                return
            self._lanes[e.session] = deque((e,))
        self._ready.append(e)
        self._gate()
        self._wake.set()

    # -- dispatcher -------------------------------------------------------------------

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._halt:
            now = loop.time()
            timers = self._timers
            while timers and timers[0][0] <= now:
                e = heapq.heappop(timers)[2]
                if e.qid in self._held:
                    self._ready.append(e)
            while self._ready and not self._stopping and len(self._inflight) < self.settings.concurrency:
                e = self._ready[0]
                if e.qid not in self._held:
                    self._ready.popleft()  # dropped meanwhile
                    continue
                # Asked only when a delivery would start: in half-open, True means "probe".
                if not self.breaker.allow(now):
                    break
                self._ready.popleft()
                task = asyncio.create_task(self._deliver(e))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            wait: float | None = None
            if timers:
                wait = timers[0][0] - now
            resume = self.breaker.resume_at()
            if self._ready and resume is not None:
                wait = resume - now if wait is None else min(wait, resume - now)
            self._wake.clear()
            try:
                async with asyncio.timeout(None if wait is None else max(0.0, wait)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _deliver(self, e: Entry) -> None:
        attempt = e.attempts + 1
        target = self.target
        self.attempts += 1
        try:
            result = await post(
                self._http, target.url, e, attempt,
                hmac_key=target.hmac_key.value if target.hmac_key else None,
                timeout=self.settings.request_timeout,
            )  # fmt: skip
        except asyncio.CancelledError:
            if self.breaker.state == "half_open":
                self.breaker.failure(asyncio.get_running_loop().time())
            raise
        self._decide(e, attempt, result)
        self._wake.set()

    def _decide(self, e: Entry, attempt: int, result: Result) -> None:
        s = self.settings
        now = asyncio.get_running_loop().time()
        e.attempts, e.last_status, e.last_error = attempt, result.status, result.error
        transient = not result.ok and result.status not in s.no_retry_statuses
        was = self.breaker.state
        if transient:
            log.debug("webhooks %s: %s attempt %d: %s", self.target.url, e.event_id, attempt, result.error)
            self.breaker.failure(now)
        else:
            self.breaker.success()  # it answered: the target is up
        if self._on_health is not None and was != self.breaker.state:
            if self.breaker.state == "open" and self.breaker.opens == 1:
                self._on_health(self.key, False, result.error)
            elif self.breaker.state == "closed" and was != "closed":
                self._on_health(self.key, True, None)
        if e.qid not in self._held:
            return  # dropped meanwhile (lease lost): the new holder decides
        if result.ok:
            self._counters.delivered += 1
            if e.event_id in self._recent:
                self._counters.duplicates += 1
            else:
                self._recent[e.event_id] = None
                if len(self._recent) > _RECENT_IDS:
                    del self._recent[next(iter(self._recent))]
            self._complete(e, None)
        elif not transient or exhausted(s.retries, attempt):
            self._complete(e, DeadRecord.of(self.key, self.target.url, e, time.time()))
        else:
            self._counters.retried += 1
            due = now + retry_delay(s.retries, attempt, self._rand())
            heapq.heappush(self._timers, (due, next(self._seq), e))

    def _complete(self, e: Entry, dead: DeadRecord | None) -> None:
        self._finishing.append((e.qid, dead))
        self._finished.clear()
        self._finish_wake.set()
        if e.session is None:
            return
        lane = self._lanes.get(e.session)
        if lane is None or lane[0] is not e:
            return  # not a lane entry (ordering none)
        lane.popleft()
        if lane:
            self._ready.append(lane[0])
        else:
            del self._lanes[e.session]

    # -- finisher ---------------------------------------------------------------------

    async def _finish(self) -> None:
        backoff = Backoff()
        while not self._halt:
            if not self._finishing:
                self._finished.set()
                self._finish_wake.clear()
                await self._finish_wake.wait()
                continue
            batch = self._finishing[:_FINISH_BATCH]
            dead = [d for _, d in batch if d is not None]
            try:
                await self._queue.finish(self.key, [q for q, _ in batch], dead)
            except StoreUnavailable as err:
                log.debug("webhooks %s: finish: %s", self.target.url, err)
                await backoff.sleep()
                continue
            except Exception:
                log.exception("webhooks %s: finish failed", self.target.url)
                await backoff.sleep()
                continue
            backoff.reset()
            del self._finishing[: len(batch)]
            for qid, _ in batch:
                done = self._held.pop(qid, None)
                if done is not None:
                    self._held_bytes -= len(done.body)
            self._gate()
            self._trim_due = True
            if dead:
                self._counters.dead += len(dead)
                self._on_dead(self.key, dead)
