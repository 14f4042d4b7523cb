"""The outbox's dispatcher: gives each session with queued messages its turn and does what
``router.outbox.turns`` decides: waits, expires, or sends the head message to the instance
that holds the session, as the proxy would, then writes the verdict.

A message is written ``sending`` before its request is, so a router that dies mid-send
leaves a ``sending`` message; whoever serves the session next marks it ``unknown`` (it may
have been sent) rather than sending it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from router.accesslog import AccessLog
from router.backoff import Backoff
from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import StoreUnavailable, UpstreamError
from router.events import EventLog
from router.outbox import delivery, pacing, signals
from router.outbox.model import FINAL, Campaign, CampaignState, Message, State
from router.outbox.outcome import Attempt, Verdict, judge
from router.outbox.store import Began, Ended, OutboxStore, Snapshot, TurnEnd, TurnStart
from router.outbox.tracking import Tracker
from router.outbox.turns import WAIT_RECHECK, Finish, Later, SessionView, Wait, decide, settle
from router.pulse import Pulse
from router.routing import Router
from router.tasks import Tasks
from router.transport import Transport

log = logging.getLogger("wa_router.outbox")

TICK = 0.05  # how often due sessions are looked for while turns are under way
IDLE = 1.0  # at most this long between looks when idle (other routers' enqueues; drift)
CONCURRENCY = 128  # sessions served at once: one send each
TURN_BATCH = 32  # free slots worth one store call before a tick has passed
MAX_RESPONSE = 1024 * 1024
SNAPSHOT_EVERY = 1.0
SWEEP_EVERY = 60.0  # finished messages older than outbox.keep are forgotten, this many at a time:
SWEEP_BATCH = 10_000
RENEW_EVERY = 3.0  # a third of the Redis lease
STALL_EVERY = 30.0  # running campaigns are checked for a stall this often
STALL_CAMPAIGNS = 100  # the newest campaigns looked at
SENT_KEPT = 86400.0  # send times kept per session (the session view counts the last day)
PERSIST_ATTEMPTS = 8
TYPING_PER_CHAR = 0.05  # seconds of "typing..." per character of the text
TYPING_MAX = 4.0
NOT_READY = frozenset({"STOPPED", "STARTING", "SCAN_QR_CODE", "FAILED"})


class Dispatcher:
    def __init__(self, config: ConfigHolder, store: OutboxStore, router: Router,
                 transport: Transport, clock: Clock, *,
                 on_change: Callable[[Message], None] = lambda m: None,
                 on_campaign: Callable[[Campaign], None] = lambda c: None,
                 rand: Callable[[], float] = random.random,
                 tracker: Tracker | None = None, events: EventLog | None = None,
                 access: AccessLog | None = None) -> None:
        self._config = config
        self.access = access  # the access log (None: off); swapped on a config reload
        self.store = store
        self._router = router
        self._transport = transport
        self._clock = clock
        self._on_change = on_change
        self.on_campaign = on_campaign
        self._rand = rand
        self.tracker = tracker or Tracker(config, store, clock, on_change)
        self._events = events
        self._streaks: dict[str, int] = {}  # session -> failed sends in a row (here)
        self._stalls = signals.StallWatch()
        self._stall_at = 0.0
        self.tasks = Tasks("outbox")
        self._wake = Pulse(clock)
        self._serving: set[str] = set()
        self.finished: dict[str, int] = {str(s): 0 for s in FINAL}
        self.snapshot = Snapshot()  # refreshed every SNAPSHOT_EVERY seconds, for metrics
        self._snapshot_at = 0.0
        self._sweep_at = 0.0
        self._renew_at = 0.0
        self._turns_at = 0.0

    def __repr__(self) -> str:
        return f"<Dispatcher serving={len(self._serving)} finished={self.finished}>"

    def start(self) -> None:
        self.tasks.spawn(self._run(), name="outbox-dispatcher")
        self.tracker.start()

    async def stop(self) -> None:
        await self.tasks.stop()
        await self.tracker.stop()

    def changed(self, m: Message) -> None:
        """A change made outside a turn (a cancel): reported like the dispatcher's own."""
        self._on_change(m)

    def kick(self) -> None:
        """Look for due sessions now (a message was queued, a turn ended, routing changed)."""
        self._wake.fire()

    async def _run(self) -> None:
        failing = Backoff(base=TICK, cap=2.0)
        while True:
            try:
                await self._step()
                if failing.failures:
                    log.warning("outbox: the store answers again")
                    failing.reset()
                await self._wake.wait(self._pause())
            except StoreUnavailable as e:
                # Redis is down or refusing: one line (not a traceback every tick), then
                # slower retries until it is back.
                if not failing.failures:
                    log.warning("outbox: %s; retrying", e.message)
                await self._clock.sleep(failing.next())
            except Exception:
                log.exception("outbox: looking for due sessions failed")
                await self._wake.wait(TICK)

    def _pause(self) -> float:
        """Until the next look for due sessions: a tick while turns are under way, else
        until the next session is due (up to IDLE; an enqueue or a turn's end wakes it)."""
        if self._serving:
            return TICK
        due = self.store.next_due
        wait = IDLE if due is None else due - self._clock.wall()
        return min(IDLE, max(TICK, wait))

    async def _step(self) -> None:
        now, wall = self._clock.now(), self._clock.wall()
        free = CONCURRENCY - len(self._serving)
        # Turns are asked for in batches: a few free slots wait for more, up to a tick.
        if free >= TURN_BATCH or (free > 0 and now - self._turns_at >= TICK):
            self._turns_at = now
            reach = pacing.horizon(self._config.current.outbox.limits)
            for start in await self.store.turns(wall, free, reach):
                self._serving.add(start.session)
                self.tasks.spawn(self._turn(start), name=f"outbox-{start.session}")
        if now >= self._renew_at:
            self._renew_at = now + RENEW_EVERY
            # Turns that take long (slow sends) keep their sessions: one call for all.
            await self.store.renew(sorted(self._serving), wall)
        if now >= self._snapshot_at:
            self._snapshot_at = now + SNAPSHOT_EVERY
            self.snapshot = await self.store.snapshot()
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_EVERY
            await self.store.sweep(wall - self._config.current.outbox.keep, SWEEP_BATCH)
        if now >= self._stall_at:
            self._stall_at = now + STALL_EVERY
            await self._stalled(wall)

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

    async def _turn(self, start: TurnStart) -> None:
        m, session = start.head, start.session
        now = self._clock.wall()
        try:
            end = await self._decide(start, now)
            await self._end(end)
        except Exception:
            log.exception("outbox: turn of session %s failed; trying again shortly", session)
            with contextlib.suppress(Exception):  # else its lease runs out and it is retried
                await self.store.end_turn(TurnEnd(session, self._clock.wall() + 1.0, m.id))
        finally:
            self._serving.discard(session)
            self.kick()  # a slot is free

    async def _decide(self, start: TurnStart, now: float) -> TurnEnd:
        """What the turn does with its head message: the turn's end, to be written."""
        m, session = start.head, start.session
        if m.state is State.SENDING:
            # Left by a router that died while sending it: it may have gone out.
            return self._ending(m, State.UNKNOWN, "the router sending it stopped before an answer", now)
        cfg = self._config.current.outbox
        if not start.paused and self._router.statuses.get(session) in signals.DOWN:
            why = signals.status_pause(await self._confirm(session))
            if why is not None:
                await self.pause(session, why)
                return TurnEnd(session, now + WAIT_RECHECK, m.id)
        view = self._view(session)
        if start.paused or start.campaign is not None:
            view = SessionView(view.instance, view.why_not,
                               paused=start.paused or start.campaign is CampaignState.PAUSED,
                               cancelled=start.campaign is CampaignState.CANCELLED)
        turn = decide(m, view, now, start.not_before, start.sent, cfg)
        if isinstance(turn, Later):
            return TurnEnd(session, turn.at, m.id)
        if isinstance(turn, Finish):
            return self._ending(m, turn.state, turn.why, now)
        if isinstance(turn, Wait):
            if m.waiting_since is not None:
                return TurnEnd(session, turn.until, m.id)
            m.waiting_since = now
            return TurnEnd(session, turn.until, m.id, m, State.QUEUED)
        return await self._send(m, turn.instance, now)

    @staticmethod
    def _ending(m: Message, state: State, why: str, now: float) -> TurnEnd:
        old, m.state, m.error, m.finished = m.state, state, why, now
        return TurnEnd(m.session, now, m.id, m, old)

    async def _end(self, end: TurnEnd) -> None:
        """Write the turn's end (after a send: tried for a while, see ``_persist``), then
        report what changed."""
        ended = Ended(False)

        async def write() -> None:
            nonlocal ended
            ended = await self.store.end_turn(end)

        if end.sent_at is not None or end.old is State.SENDING:
            await self._persist(write)
        else:
            await write()
        m = end.message
        if m is None or not ended.written:
            return
        if end.old is not m.state:
            if m.state in FINAL:
                self.finished[str(m.state)] += 1
            self._on_change(m)
            if m.state is State.SENT or m.state is State.UNKNOWN:
                self.tracker.later(m)  # not awaited: the session's slot is free at once
        if ended.finished is not None:
            self.on_campaign(ended.finished)

    async def _send(self, m: Message, instance: str, now: float) -> TurnEnd:
        inst = self._router.fleet.get(instance)
        assert inst is not None
        cfg = self._config.current
        # Written before the request is: a crash from here on leaves it `sending`.
        m.state, m.instance = State.SENDING, instance
        began = await self.store.begin_send(m)
        if began is not Began.OK:
            m.state = State.QUEUED
            if began is Began.CANCELLED:
                return self._ending(m, State.CANCELLED, "its campaign was cancelled", now)
            # Paused meanwhile, or no longer ours: the next turn looks again.
            return TurnEnd(m.session, now + (WAIT_RECHECK if began is Began.PAUSED else 0.0), m.id)
        self._on_change(m)
        base = inst.address.origin + inst.address.base_path
        if cfg.outbox.typing:
            await self._type(m, base, inst.auth_headers)
        began_at = self._clock.now()
        attempt, error, answer = await self._post(m, base, inst.auth_headers,
                                                  cfg.limits.upstream_timeout)
        if self.access is not None:
            self.access.outbox(m, instance, attempt.status, error, self._clock.now() - began_at)
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
        streak, why = signals.after_attempt(self._streaks.pop(m.session, 0), attempt, verdict,
                                            cfg.outbox.pause_after_failures)
        if streak:
            self._streaks[m.session] = streak
        if why is not None:
            await self.pause(m.session, why)
        if verdict is not Verdict.WAIT:
            m.attempts = made  # a session that was not ready there is no attempt
        done = self._clock.wall()
        result = settle(m, verdict, done, cfg.outbox, self._rand(), self._rand(), error)
        m.state, m.retry_at, m.error = result.state, result.retry_at, result.error
        if answer is not None:
            m.response = answer
        sent_at = None
        if verdict is Verdict.SENT:
            m.sent_at, m.waiting_since, m.error, sent_at = done, None, None, done
            m.wa_id = delivery.wa_id(answer["body"] if answer else None)
        elif verdict is Verdict.WAIT:
            m.waiting_since = m.waiting_since if m.waiting_since is not None else done
            if attempt.status == 404:
                self._router.not_found(m.session)  # the proxy's reconciliation
        if m.state in FINAL:
            m.finished = done
        return TurnEnd(m.session, result.next_turn, m.id, m, State.SENDING, sent_at=sent_at,
                       not_before=result.gap_until or done, horizon=SENT_KEPT)

    async def _confirm(self, session: str) -> str | None:
        """The session's status as its instance reports it now (a status learned from a
        webhook may come from the instance it just left: a move stops it there)."""
        a = self._router.store.cached(session)
        inst = None if a is None or a.moving else self._router.fleet.get(a.instance)
        if inst is None or not inst.healthy or self._router.api is None:
            return None
        status = await self._router.api.status(inst, session)
        if status is not None and status != "NOT_FOUND":
            self._router.record_status(session, status)
        return status

    async def _stalled(self, wall: float) -> None:
        running = [(c.id, c.counts["sent"], bool(c.counts["queued"] + c.counts["sending"]))
                   for c in await self.store.campaigns(STALL_CAMPAIGNS)
                   if c.state is CampaignState.RUNNING]
        after = self._config.current.outbox.stall_alert
        for cid in self._stalls.check(running, wall, after):
            if self._events is not None:
                self._events.emit("outbox_campaign_stalled",
                                  f"outbox campaign {cid} has messages left but sent none for "
                                  f"{after:g}s (sessions down, paused or waiting?)",
                                  severity="warning", data={"target": cid})

    async def pause(self, session: str, why: str) -> None:
        """A ban signal: stop the session's queue until an operator resumes it."""
        try:
            await self.store.set_paused(session, True)
        except StoreUnavailable as e:
            log.warning("outbox: pausing %s (%s) failed: %s", session, why, e.message)
            return
        if self._events is not None:
            self._events.emit("outbox_session_paused",
                              f"outbox queue of {session} paused: {why}; resume it from the "
                              "admin API, the CLI or the dashboard", session=session,
                              severity="warning")

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
