"""The outbox's dispatcher: gives each session with queued messages its turn and does what
``router.outbox.turns`` decides: waits, expires, or sends the head message to the instance
that holds the session, as the proxy would, then writes the verdict.

A message is written ``sending`` before its request is, so a router that dies mid-send
leaves a ``sending`` message; whoever serves the session next marks it ``unknown`` (it may
have been sent) rather than sending it again.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from router.backoff import Backoff
from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import RouterError, StoreUnavailable, UpstreamError
from router.outbox.model import FINAL, Campaign, CampaignState, Message, State
from router.outbox.outcome import Attempt, Verdict, judge
from router.outbox.pacing import trim
from router.outbox.store import OutboxStore, Snapshot
from router.outbox.turns import Finish, Later, Send, SessionView, Wait, decide, settle
from router.pulse import Pulse
from router.routing import Router
from router.tasks import Tasks
from router.transport import Transport

log = logging.getLogger("wa_router.outbox")

TICK = 0.05  # how often due sessions are looked for (enqueues wake it at once)
CONCURRENCY = 128  # sessions served at once: one send each
MAX_RESPONSE = 1024 * 1024
SNAPSHOT_EVERY = 1.0
SWEEP_EVERY = 60.0  # finished messages older than outbox.keep are forgotten, this many at a time:
SWEEP_BATCH = 10_000
RENEW_EVERY = 3.0  # a third of the Redis lease
PERSIST_ATTEMPTS = 8
TYPING_PER_CHAR = 0.05  # seconds of "typing..." per character of the text
TYPING_MAX = 4.0
NOT_READY = frozenset({"STOPPED", "STARTING", "SCAN_QR_CODE", "FAILED"})


class Dispatcher:
    def __init__(self, config: ConfigHolder, store: OutboxStore, router: Router,
                 transport: Transport, clock: Clock, *,
                 on_change: Callable[[Message], None] = lambda m: None,
                 on_campaign: Callable[[Campaign], None] = lambda c: None,
                 rand: Callable[[], float] = random.random) -> None:
        self._config = config
        self.store = store
        self._router = router
        self._transport = transport
        self._clock = clock
        self._on_change = on_change
        self.on_campaign = on_campaign
        self._rand = rand
        self.tasks = Tasks("outbox")
        self._wake = Pulse(clock)
        self._serving: set[str] = set()
        self.finished: dict[str, int] = {str(s): 0 for s in FINAL}
        self.snapshot = Snapshot()  # refreshed every SNAPSHOT_EVERY seconds, for metrics
        self._snapshot_at = 0.0
        self._sweep_at = 0.0

    def __repr__(self) -> str:
        return f"<Dispatcher serving={len(self._serving)} finished={self.finished}>"

    def start(self) -> None:
        self.tasks.spawn(self._run(), name="outbox-dispatcher")

    async def stop(self) -> None:
        await self.tasks.stop()

    def changed(self, m: Message) -> None:
        """A change made outside a turn (a cancel): reported like the dispatcher's own."""
        self._on_change(m)

    def kick(self) -> None:
        """Look for due sessions now (a message was queued, routing changed)."""
        self._wake.fire()

    async def _run(self) -> None:
        while True:
            try:
                free = CONCURRENCY - len(self._serving)
                if free > 0:
                    for session in await self.store.due(self._clock.wall(), free):
                        if session not in self._serving:
                            self._serving.add(session)
                            self.tasks.spawn(self._turn(session), name=f"outbox-{session}")
                if self._clock.now() >= self._snapshot_at:
                    self._snapshot_at = self._clock.now() + SNAPSHOT_EVERY
                    self.snapshot = await self.store.snapshot()
                if self._clock.now() >= self._sweep_at:
                    self._sweep_at = self._clock.now() + SWEEP_EVERY
                    keep = self._config.current.outbox.keep
                    await self.store.sweep(self._clock.wall() - keep, SWEEP_BATCH)
            except Exception:
                log.exception("outbox: looking for due sessions failed")
            await self._wake.wait(TICK)

    # -- one turn --------------------------------------------------------------------------

    def _view(self, session: str) -> SessionView:
        a = self._router.store.cached(session)
        if a is None:
            return SessionView(None, "the session is not placed on any instance yet")
        if a.moving:
            return SessionView(None, "the session is moving to another instance")
        inst = self._router.fleet.get(a.instance)
        if inst is None or not inst.healthy:
            return SessionView(None, f"instance {a.instance} is down")
        status = self._router.statuses.get(session)
        if status in NOT_READY:
            return SessionView(None, f"the session is {status} on {a.instance}")
        return SessionView(inst.name)

    async def _turn(self, session: str) -> None:
        try:
            m = await self.store.head(session)
            if m is None:
                await self.store.schedule(session, None)  # the next enqueue schedules it
                return
            now = self._clock.wall()
            if m.state is State.SENDING:
                # Left by a router that died while sending it: it may have gone out.
                await self._finish(m, State.UNKNOWN, "the router sending it stopped before an answer", now)
                await self.store.schedule(session, now)
                return
            cfg = self._config.current.outbox
            pacing = await self.store.pacing(session)
            trim(pacing.sent, now, cfg.limits)
            view = self._view(session)
            if await self.store.paused(session) or await self._campaign_paused(m):
                view = SessionView(view.instance, view.why_not, paused=True)
            turn = decide(m, view, now, pacing.not_before, pacing.sent, cfg)
            if isinstance(turn, Later):
                await self.store.schedule(session, turn.at)
            elif isinstance(turn, Finish):
                await self._finish(m, turn.state, turn.why, now)
                await self.store.schedule(session, now)
            elif isinstance(turn, Wait):
                if m.waiting_since is None:
                    m.waiting_since = now
                    await self.store.save(m, m.state)
                await self.store.schedule(session, turn.until)
            elif isinstance(turn, Send):
                await self._send(m, turn.instance, now)
        except Exception:
            log.exception("outbox: turn of session %s failed; trying again shortly", session)
            await self.store.schedule(session, self._clock.wall() + 1.0)
        finally:
            self._serving.discard(session)

    async def _campaign_paused(self, m: Message) -> bool:
        if m.campaign is None:
            return False
        c = await self.store.get_campaign(m.campaign)
        return c is not None and c.state is CampaignState.PAUSED

    async def _finish(self, m: Message, state: State, why: str, now: float) -> None:
        old, m.state, m.error, m.finished = m.state, state, why, now
        await self.store.save(m, old)
        self.finished[str(state)] += 1
        self._on_change(m)
        await self._campaign_done(m, now)

    async def _campaign_done(self, m: Message, now: float) -> None:
        """A running campaign whose last message just ended is finished."""
        if m.campaign is None:
            return
        c = await self.store.get_campaign(m.campaign)
        if (c is not None and c.state is CampaignState.RUNNING
                and not c.counts.get("queued") and not c.counts.get("sending")):
            c.state, c.finished = CampaignState.FINISHED, now
            await self.store.save_campaign(c)
            self.on_campaign(c)

    async def _send(self, m: Message, instance: str, now: float) -> None:
        inst = self._router.fleet.get(instance)
        assert inst is not None
        cfg = self._config.current
        # Written before the request is: a crash from here on leaves it `sending`.
        m.state, m.instance = State.SENDING, instance
        await self.store.save(m, State.QUEUED)
        self._on_change(m)
        base = inst.address.origin + inst.address.base_path
        renewing = self.tasks.spawn(self._renew(m.session), name=f"outbox-lease-{m.session}")
        try:
            if cfg.outbox.typing:
                await self._type(m, base, inst.auth_headers)
            attempt, error, answer = await self._post(m, base, inst.auth_headers,
                                                      cfg.limits.upstream_timeout)
        finally:
            if renewing is not None:
                renewing.cancel()
        # What the proxy would report of this answer (a refused connection gets the instance
        # probed at once, so a crashed one is seen down and the queue waits).
        if attempt.status is None:
            self._router.passive_failure(inst, connect_error=not attempt.written)
        elif attempt.status in self._router.passive_statuses:
            self._router.passive_failure(inst, connect_error=False)
        else:
            self._router.passive_success(inst)
        made = m.attempts + 1
        verdict = judge(attempt, made, cfg.outbox.retries.attempts)
        if verdict is not Verdict.WAIT:
            m.attempts = made  # a session that was not ready there is no attempt
        done = self._clock.wall()
        result = settle(m, verdict, done, cfg.outbox, self._rand(), self._rand(), error)
        m.state, m.retry_at, m.error = result.state, result.retry_at, result.error
        if answer is not None:
            m.response = answer
        if verdict is Verdict.SENT:
            m.sent_at, m.waiting_since, m.error = done, None, None
            await self._persist(lambda: self.store.record_send(m.session, done, result.gap_until or done))
        elif verdict is Verdict.WAIT:
            m.waiting_since = m.waiting_since if m.waiting_since is not None else done
            if attempt.status == 404:
                self._router.not_found(m.session)  # the proxy's reconciliation
        if m.state in FINAL:
            m.finished = done
            self.finished[str(m.state)] += 1
        await self._persist(lambda: self.store.save(m, State.SENDING))
        await self.store.schedule(m.session, result.next_turn)
        self._on_change(m)
        if m.state in FINAL:
            await self._campaign_done(m, done)

    async def _persist(self, write: Callable[[], Awaitable[None]]) -> None:
        """A write after the send: a store that fails now must not turn a message that went
        out into an ``unknown`` one if it comes back soon, so it is tried for a while."""
        retry = Backoff(base=0.1, cap=2.0)
        for _ in range(PERSIST_ATTEMPTS - 1):
            try:
                await write()
                return
            except StoreUnavailable:
                await self._clock.sleep(retry.next())
        await write()

    async def _renew(self, session: str) -> None:
        """Keep the session's lease while its send runs (another router must not think this
        one died and take the session meanwhile)."""
        while True:
            await self._clock.sleep(RENEW_EVERY)
            try:
                await self.store.renew(session, self._clock.wall())
            except RouterError as e:
                log.warning("outbox: renewing the lease of %s: %s", session, e.message)

    async def _type(self, m: Message, base: str, auth: dict[str, str]) -> None:
        """WAHA's anti-blocking advice: typing, a pause that grows with the text, then the
        send. Best effort: a failure here never stops the send."""
        req = m.request
        if req.path != "/api/sendText":
            return
        try:
            data = json.loads(req.body)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        who = json.dumps({"session": m.session, "chatId": data.get("chatId")}).encode()
        headers = {"Content-Type": "application/json", **auth}
        text = data.get("text")
        pause = min(TYPING_MAX, TYPING_PER_CHAR * len(text)) if isinstance(text, str) else 1.0
        for step in ("startTyping", "stopTyping"):
            try:
                await self._transport.request("POST", f"{base}/api/{step}", who, headers,
                                              timeout=5.0)
            except UpstreamError as e:
                log.info("outbox: %s for %s: %s", step, m.session, e.message)
            if step == "startTyping":
                await self._clock.sleep(pause)

    async def _post(self, m: Message, base: str, auth: dict[str, str], timeout: float
                    ) -> tuple[Attempt, str | None, dict[str, Any] | None]:
        req = m.request
        url = base + req.path + (f"?{req.query}" if req.query else "")
        headers = {"X-Request-Id": req.request_id, "X-Forwarded-Proto": "http", **auth}
        if req.content_type:
            headers["Content-Type"] = req.content_type
        try:
            r = await self._transport.request(req.method, url, req.body, headers, timeout=timeout,
                                              max_body=MAX_RESPONSE, once=True)
        except UpstreamError as e:
            return Attempt(written=e.reached_instance), e.message, None
        answer = {"status": r.status, "body": _body(r.body)}
        limited = b"rate-overlimit" in r.body
        error = None if 200 <= r.status < 300 else f"instance answered {r.status}"
        return Attempt(written=True, status=r.status, rate_limited=limited), error, answer


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")
