"""``WebhookRelay``: accept inbound webhooks durably, deliver them to every target.

The receiver (proxy) validates a request, then ``relay.accept_nowait([event], done)`` and
answers 200 only once ``done(None)`` is called: in Redis mode the event is then in Redis (in every matching
target's stream; how durable that is depends on Redis' ``appendonly``/``appendfsync``); in
memory mode it is queued in this process only (``durable`` is False). Concurrent accepts
share one round trip (``batcher``), which is what makes >10k events/s.

Each configured target has a ``TargetWorker`` (``worker``: ordering, retries, breaker,
crash recovery) over its own queue (``queue_redis`` / ``queue_memory``). Dead entries raise
a ``webhook_dead`` warning on the ``EventLog``: the first one of a target at once, then at
most one event per ``dead_event_interval`` per target, counting those in between.

Config reloads (``update``): a target whose URL stays keeps its queue and worker (new
``hmac_key``/``events`` apply at once); a removed target's worker stops but its stream stays
in Redis, delivered again if the URL comes back; a new target starts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any

from router.batcher import settle
from router.config.model import WebhooksConfig, WebhookTarget
from router.errors import ShuttingDown, StoreUnavailable
from router.events import EventLog
from router.tasks import Tasks
from router.transport import HttpTransport, Transport
from router.webhooks.base import Done, Queue
from router.webhooks.filters import EventFilter, target_keys
from router.webhooks.model import Counters, DeadRecord, InboundEvent
from router.webhooks.queue_memory import MemoryQueue
from router.webhooks.queue_redis import RedisQueue
from router.webhooks.worker import TargetWorker, WorkerSettings

log = logging.getLogger(__name__)


def default_consumer() -> str:
    """Unique per process, readable in ``XINFO CONSUMERS``: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class WebhookRelay:
    """See the module docstring. Tuning knobs are keyword arguments with production
    defaults; tests lower ``claim_idle`` and the breaker periods."""

    def __init__(
        self,
        config: WebhooksConfig,
        *,
        redis_url: str | None,
        prefix: str,
        events: EventLog,
        http: Transport | None = None,
        consumer: str | None = None,
        claim_idle: float = 15.0,
        request_timeout: float = 10.0,
        concurrency: int = 64,
        stop_timeout: float = 5.0,
        breaker_threshold: int = 10,
        breaker_base: float = 1.0,
        breaker_max: float = 30.0,
        backlog_interval: float = 1.0,
        dead_event_interval: float = 10.0,
        connect_timeout: float = 1.0,
        op_timeout: float = 2.0,
    ) -> None:
        self.consumer = consumer or default_consumer()
        self.durable = redis_url is not None
        self.counters = Counters()
        self._events = events
        self._http = http
        self._own_http = http is None
        self._queue: Queue
        if redis_url is not None:
            self._queue = RedisQueue(redis_url, prefix, self.consumer,
                                     connect_timeout=connect_timeout, op_timeout=op_timeout)
        else:
            self._queue = MemoryQueue(self.consumer)
        self._knobs = WorkerSettings(
            claim_idle=claim_idle, request_timeout=request_timeout, concurrency=concurrency,
            breaker_threshold=breaker_threshold, breaker_base=breaker_base, breaker_max=breaker_max,
        )  # fmt: skip
        self._stop_timeout = stop_timeout
        self._backlog_interval = backlog_interval
        self._dead_interval = dead_event_interval
        self.config = config
        self._routes: list[tuple[str, EventFilter]] = []
        self._workers: dict[str, TargetWorker] = {}
        self._backlog = 0
        self._backlogs: dict[str, int] = {}
        self._dead_notes: dict[str, tuple[int, float, DeadRecord | None]] = {}  # unreported, last emit, sample
        self._maintenance = Tasks("webhooks-maintenance")
        self._started = False
        self._stopped = False  # no more accepts
        self._aborted = False
        self._closed = False
        self._route(config)

    def __repr__(self) -> str:
        return (f"<WebhookRelay {len(self._workers)} targets, durable={self.durable}, "
                f"received={self.received} delivered={self.delivered} dead={self.dead_count}>")

    # -- counters (plain ints for the metrics collector) ------------------------------

    @property
    def received(self) -> int:
        return self.counters.received

    @property
    def delivered(self) -> int:
        return self.counters.delivered

    @property
    def retried(self) -> int:
        return self.counters.retried

    @property
    def dead_count(self) -> int:
        return self.counters.dead

    @property
    def duplicates(self) -> int:
        return self.counters.duplicates

    # -- lifecycle --------------------------------------------------------------------

    def _settings(self, config: WebhooksConfig) -> WorkerSettings:
        return dataclasses.replace(self._knobs, retries=config.retries,
                                   no_retry_statuses=config.no_retry_statuses, ordering=config.ordering)

    def _route(self, config: WebhooksConfig) -> list[str]:
        keys = target_keys([t.url for t in config.targets])
        self._routes = [(k, EventFilter(t.events)) for k, t in zip(keys, config.targets, strict=True)]
        return keys

    async def start(self) -> None:
        """Connect and start the workers. Never fails because Redis is down: the workers
        keep trying (and ``accept`` raises ``StoreUnavailable`` meanwhile)."""
        if self._started:
            return
        self._started = True
        await self._queue.open()
        if self._http is None:
            # No global connection limit: concurrency is bounded per target by the workers.
            self._http = HttpTransport()
        settings = self._settings(self.config)
        for (key, _), target in zip(self._routes, self.config.targets, strict=True):
            self._start_worker(key, target, settings)
        self._maintenance.spawn(self._maintain(), name="webhooks-maintenance")

    def _start_worker(self, key: str, target: WebhookTarget, settings: WorkerSettings) -> None:
        assert self._http is not None
        w = TargetWorker(key, target, self._queue, settings, self._http, self.counters,
                         self._note_dead, on_health=self._note_health)
        self._workers[key] = w
        w.start()

    async def stop(self) -> None:
        """Graceful: no new work, deliveries in flight finish (bounded by ``stop_timeout``),
        decisions are written, everything else stays queued (Redis) for the next run or
        another router. In memory mode, what is still queued is lost (logged)."""
        if self._closed:
            return
        self._closed = self._stopped = True
        await self._maintenance.stop()
        if not self._aborted:
            await asyncio.gather(*(w.stop(self._stop_timeout) for w in self._workers.values()),
                                 return_exceptions=True)
        self._flush_dead_notes(force=True)
        if isinstance(self._queue, MemoryQueue):
            left = self._queue.pending_total()
            if left:
                log.warning("webhooks: %d undelivered events lost at stop (in-memory queue, "
                            "configure store.url for durable delivery)", left)
        try:
            async with asyncio.timeout(3.0):
                await self._queue.close()
                if self._own_http and self._http is not None:
                    self._http.close()
        except TimeoutError:
            log.warning("webhooks: closing connections timed out")

    def abort(self) -> None:
        """Stop every task at once without any I/O: what a crash leaves behind (tests).
        ``stop()`` afterwards only closes the connections."""
        self._stopped = self._aborted = True
        self._maintenance.abort()
        for w in self._workers.values():
            w.abort()

    async def update(self, config: WebhooksConfig) -> None:
        """Apply a reloaded config (module docstring)."""
        old = self._workers
        keys = self._route(config)
        self.config = config
        settings = self._settings(config)
        if not self._started:
            return
        new: dict[str, TargetWorker] = {}
        for key, target in zip(keys, config.targets, strict=True):
            if key in old:
                old[key].update(target, settings)
                new[key] = old[key]
        removed = [w for k, w in old.items() if k not in new]
        self._workers = new
        for key, target in zip(keys, config.targets, strict=True):
            if key not in new:
                self._start_worker(key, target, settings)
        await asyncio.gather(*(w.stop(self._stop_timeout) for w in removed), return_exceptions=True)

    # -- the receiver's call ----------------------------------------------------------

    def wants(self, kind: str) -> bool:
        """Whether any target would receive an event of ``kind`` (so a producer can skip
        building one nobody wants)."""
        return any(match(kind) for _, match in self._routes)

    def accept_nowait(self, events: Sequence[InboundEvent], done: Done) -> None:
        """Store ``events`` for every target whose ``events`` filter matches; ``done(None)``
        once stored (Redis) / queued (memory), possibly before this returns;
        ``done(StoreUnavailable)`` when Redis is down (answer 503: the instance retries).
        Raises ``ShuttingDown`` after ``stop``."""
        if self._stopped:
            raise ShuttingDown("webhook relay is stopping")
        items = [(key, ev) for ev in events for key, match in self._routes if match(ev.event)]
        n = len(events)
        counters = self.counters

        def stored(error: BaseException | None) -> None:
            if error is None:
                counters.received += n
            done(error)

        if items:
            self._queue.add(items, stored)
        else:
            stored(None)

    async def accept(self, events: Sequence[InboundEvent]) -> None:
        """``accept_nowait``, awaited."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.accept_nowait(events, lambda e: settle(fut, e))
        await fut

    # -- admin ------------------------------------------------------------------------

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead entries, newest first: ``{"id" (for replay), "event_id", "target" (URL),
        "event", "session", "attempts", "last_status", "last_error", "received_at",
        "dead_at", "body"}``. ``StoreUnavailable`` when Redis is down."""
        return await self._queue.dead(limit)

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put dead entries (all, or these dead-entry ids) back on their target's queue;
        entries of targets no longer configured stay dead. Returns how many moved.
        A replayed event is queued after what its session received meanwhile."""
        keys = {k for k, _ in self._routes}
        n = await self._queue.replay(None if ids is None else list(ids), keys)
        self.counters.replayed += n
        if n:
            self._events.emit("webhook_replayed", f"{n} dead webhook(s) queued again for delivery",
                              data={"count": n})
        return n

    def backlog(self) -> int:
        """Undelivered entries across targets (refreshed every ``backlog_interval``)."""
        if isinstance(self._queue, MemoryQueue):
            return self._queue.pending_total()
        return self._backlog

    def status(self) -> list[dict[str, Any]]:
        """Per-target worker state (for the admin API / dashboard), with its backlog."""
        out = []
        for key, w in self._workers.items():
            st = w.status()
            if isinstance(self._queue, MemoryQueue):
                st["backlog"] = self._queue.pending_total(key)
            else:
                st["backlog"] = self._backlogs.get(key, 0)
            out.append(st)
        return out

    def targets(self) -> dict[str, TargetWorker]:
        return dict(self._workers)

    # -- background -------------------------------------------------------------------

    async def _maintain(self) -> None:
        while not self._stopped:
            try:
                keys = list(self._workers)
                if keys and not isinstance(self._queue, MemoryQueue):
                    self._backlogs = await self._queue.backlog(keys)
                    self._backlog = sum(self._backlogs.values())
            except StoreUnavailable:
                pass  # keep the last known value; the workers log the outage
            except Exception:
                log.exception("webhooks: backlog refresh failed")
            self._flush_dead_notes()
            await asyncio.sleep(self._backlog_interval)

    def _note_health(self, key: str, up: bool, error: str | None) -> None:
        w = self._workers.get(key)
        url = w.target.url if w is not None else key
        with contextlib.suppress(Exception):
            if up:
                self._events.emit("webhook_target_up", f"webhook target {url} answers again; "
                                  "delivery resumed", data={"target": url})
            else:
                self._events.emit("webhook_target_down", f"webhook target {url} failing ({error}); "
                                  "delivery paused, probing with growing delays; events are kept",
                                  severity="warning", data={"target": url, "error": error})

    def _note_dead(self, key: str, records: Sequence[DeadRecord]) -> None:
        unreported, last, _ = self._dead_notes.get(key, (0, float("-inf"), None))
        now = time.monotonic()
        if now - last >= self._dead_interval:
            self._emit_dead(records[0], unreported + len(records) - 1)
            self._dead_notes[key] = (0, now, None)
        else:
            self._dead_notes[key] = (unreported + len(records), last, records[-1])

    def _flush_dead_notes(self, force: bool = False) -> None:
        now = time.monotonic()
        for key, (unreported, last, sample) in list(self._dead_notes.items()):
            if unreported and sample is not None and (force or now - last >= self._dead_interval):
                self._emit_dead(sample, unreported - 1)
                self._dead_notes[key] = (0, now, None)

    def _emit_dead(self, d: DeadRecord, more: int) -> None:
        why = f"HTTP {d.last_status}" if d.last_status is not None else (d.last_error or "failed")
        extra = f" (+{more} more)" if more else ""
        with contextlib.suppress(Exception):
            self._events.emit(
                "webhook_dead",
                f"webhook {d.event} {d.event_id} to {d.target_url} dead after {d.attempts} "
                f"attempt(s): {why}{extra}",
                session=d.session,
                severity="warning",
                data={"target": d.target_url, "event_id": d.event_id, "event": d.event,
                      "attempts": d.attempts, "last_status": d.last_status,
                      "last_error": d.last_error, "more": more},
            )  # fmt: skip
