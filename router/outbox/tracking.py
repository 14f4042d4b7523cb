"""Delivery tracking: what the instances report about the messages the outbox sent
(contract: "Idempotency keys and delivery tracking").

- ``message.ack`` events move a ``sent`` message's ``delivery`` (server, device, read,
  played, error), each change reported as an ``outbox.message`` event;
- a sent message with no ack within ``outbox.ack_timeout`` is counted (once, fleet-wide)
  and listed;
- an ``unknown`` message (sent, answer lost) becomes ``sent`` when the session reports that
  very message sent (``message.any``, ``fromMe``, same chat and text) within
  ``outbox.reconcile_window``, whichever of the two the router learns first.

Webhooks are observed without a task each: parsed, queued, and handled by one loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import RouterError
from router.outbox import delivery
from router.outbox.delivery import Ack, Seen
from router.outbox.model import Message, State
from router.outbox.store import OutboxStore
from router.pulse import Pulse
from router.tasks import Tasks

log = logging.getLogger("wa_router.outbox")

CHECK_EVERY = 5.0  # unacked messages past the timeout are counted this often
QUEUE_MAX = 100_000  # observed events waiting (beyond: dropped, counted)


class Tracker:
    def __init__(self, config: ConfigHolder, store: OutboxStore, clock: Clock,
                 on_change: Callable[[Message], None] = lambda m: None) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._on_change = on_change
        self._queue: deque[Ack | Seen | Message] = deque()
        self._wake = Pulse(clock)
        self._tasks = Tasks("outbox-tracking")
        self.unacked_total = 0  # router_outbox_unacked_total
        self.reconciled = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Tracker queued={len(self._queue)} unacked_total={self.unacked_total}>"

    def start(self) -> None:
        self._tasks.spawn(self._run(), name="outbox-tracking")

    async def stop(self) -> None:
        await self._tasks.stop()

    # -- what the instances report ------------------------------------------------------------

    def observe(self, event: str, session: str | None, body: bytes) -> None:
        """A webhook the relay accepted (any kind; most are not for the outbox)."""
        if event != "message.ack" and event != "message.any":
            return
        found = delivery.parse(event, session, body)
        if found is None:
            return
        if len(self._queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self._queue.append(found)
        self._wake.fire()

    async def _run(self) -> None:
        next_check = 0.0
        while True:
            while self._queue:
                item = self._queue.popleft()
                try:
                    if isinstance(item, Ack):
                        await self._ack(item)
                    elif isinstance(item, Seen):
                        await self._seen(item)
                    elif item.state is State.SENT:
                        await self.sent(item)
                    else:
                        await self.unknown(item)
                except RouterError as e:
                    log.warning("outbox: a delivery report was not applied: %s", e.message)
                except Exception:
                    log.exception("outbox: a delivery report failed")
            if self._clock.now() >= next_check:
                next_check = self._clock.now() + CHECK_EVERY
                try:
                    cutoff = self._clock.wall() - self._config.current.outbox.ack_timeout
                    self.unacked_total += await self._store.crossed(cutoff)
                except RouterError as e:
                    log.warning("outbox: counting unacked messages: %s", e.message)
            await self._wake.wait(CHECK_EVERY)

    async def _ack(self, ack: Ack) -> None:
        m = await self._store.by_wa(ack.session, ack.wa_id)
        if m is None or m.state is not State.SENT or not delivery.better(m.delivery, ack.level):
            return
        m.delivery = {"ack": delivery.ACKS[ack.level], "at": self._clock.wall()}
        if await self._store.acked(m):
            self._on_change(m)

    async def _seen(self, seen: Seen) -> None:
        window = self._config.current.outbox.reconcile_window
        waiting = await self._store.seen(seen.session, seen.key, seen.wa_id, self._clock.wall(),
                                         window)
        if waiting is None:
            return
        m = await self._store.get(waiting)
        if m is not None and m.state is State.UNKNOWN:
            await self._reconcile(m, seen.wa_id, seen.at)

    # -- what the dispatcher reports ------------------------------------------------------------

    def later(self, m: Message) -> None:
        """``m`` just ended ``sent`` or ``unknown``: tracked by the loop, in order."""
        self._queue.append(m)
        self._wake.fire()

    async def sent(self, m: Message) -> None:
        """``m`` was sent: track its acks (best effort: tracking never holds a send up)."""
        try:
            await self._store.track(m, delivery.request_key(m.request.body))
        except RouterError as e:
            log.warning("outbox: tracking %s: %s", m.id, e.message)

    async def unknown(self, m: Message) -> None:
        """``m`` became ``unknown``: settled now if its ``message.any`` came already."""
        key = delivery.request_key(m.request.body)
        if key is None:
            return
        now = self._clock.wall()
        try:
            sighting = await self._store.unknown(m, key, now,
                                                 self._config.current.outbox.reconcile_window)
            if sighting is not None:
                await self._reconcile(m, sighting.wa_id, None)
        except RouterError as e:
            log.warning("outbox: reconciling %s: %s", m.id, e.message)

    async def _reconcile(self, m: Message, wa_id: str | None, at: float | None) -> None:
        m.state, m.error = State.SENT, None
        m.sent_at = at or self._clock.wall()
        if wa_id is not None:
            m.wa_id = wa_id
        if (await self._store.change(m, State.UNKNOWN)).written:
            self.reconciled += 1
            log.info("outbox: %s was sent after all (the instance reported it): sent", m.id)
            self._on_change(m)
            await self.sent(m)
