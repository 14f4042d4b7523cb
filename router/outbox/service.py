"""The outbox's operations, as the proxy port and the admin port call them: queue a send,
campaigns, messages and sessions (contract: "Outbox: queued sends"). Validation is whole:
a bad request stores nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from router.clock import Clock
from router.config.holder import ConfigHolder
from router.config.units import parse_duration
from router.errors import (
    BadRequest,
    BodyTooLarge,
    Conflict,
    IdempotencyKeyReused,
    InvalidItems,
    InvalidSessionId,
    NotFound,
)
from router.outbox.dispatcher import Dispatcher
from router.outbox.model import (
    Campaign,
    CampaignState,
    Message,
    Priority,
    Request,
    State,
    message_id,
    seq_at,
)
from router.outbox.store import IdempotencyKey, KeyReused, OutboxStore

Extract = Callable[[str, str, str, Mapping[str, str], bytes, object], str | None]
"""(method, path, query, headers, body, the body as JSON if parsed already) -> the session
the request names, or None."""

def parse_time(value: str, now: float, *, durations: bool) -> float:
    """RFC 3339, Unix seconds, or (``durations``) a duration from now such as ``2h``."""
    text = value.strip()
    try:
        return now + parse_duration(text) if durations else float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"not a time: {value[:64]!r} (RFC 3339, Unix seconds"
                         + (", or a duration such as 2h)" if durations else ")")) from None


def _ref(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        raise BadRequest("ref must be at most 128 printable characters")
    return value


_PRIORITIES = {None: Priority.NORMAL, "": Priority.NORMAL, "normal": Priority.NORMAL, "high": Priority.HIGH}
_FIELDS = frozenset({"path", "body", "method", "ref", "not_before", "priority", "expires"})


def _priority(value: object) -> Priority:
    found = _PRIORITIES.get(value) if value is None or isinstance(value, str) else None
    if found is None and isinstance(value, str):
        found = _PRIORITIES.get(value.lower())
    if found is None:
        raise BadRequest("priority must be high or normal")
    return found


_dumps = json.JSONEncoder(separators=(",", ":")).encode


class OutboxService:
    def __init__(self, config: ConfigHolder, store: OutboxStore, dispatcher: Dispatcher,
                 clock: Clock, extract: Extract) -> None:
        self._config = config
        self.store = store
        self.dispatcher = dispatcher
        self._clock = clock
        self._extract = extract
        self.enqueued = 0
        self._last_seq = 0

    def _seq(self, now: float) -> int:
        """Enqueue order: microseconds since SEQ_EPOCH (comparable between routers),
        strictly increasing in this process (a batch keeps its order)."""
        self._last_seq = max(self._last_seq + 1, seq_at(now))
        return self._last_seq

    def __repr__(self) -> str:
        return f"<OutboxService enqueued={self.enqueued} store={self.store!r}>"

    # -- one send --------------------------------------------------------------------------

    async def enqueue(self, method: str, path: str, query: str, headers: Mapping[str, str],
                      body: bytes, *, client: str = "") -> tuple[int, dict[str, Any]]:
        """``POST /outbox/<send>``: 202 with the queued message (200 with the one queued
        before under the same ``Idempotency-Key``). ``headers``: lower-case names."""
        now = self._clock.wall()
        message = self._message(method, path, query, headers, body, now,
                                headers.get("x-outbox-priority"), headers.get("x-outbox-ref"),
                                headers.get("x-outbox-not-before"),
                                self._expiry(headers.get("x-outbox-expires"), now), None)
        idem = None
        key = headers.get("idempotency-key")
        if key is not None:
            if not 0 < len(key) <= 255 or not key.isprintable():
                raise BadRequest("Idempotency-Key must be 1 to 255 printable characters")
            idem = IdempotencyKey(f"{client}\n{message.session}\n{method}\n{path}", key,
                                  hashlib.sha256(body).hexdigest())
        try:
            stored = await self.store.add([message], idem, self._config.current.outbox.idempotency_ttl)
        except KeyReused:
            raise IdempotencyKeyReused("this Idempotency-Key was used with another body") from None
        m = stored[0]
        if m is message:
            self.enqueued += 1
            self.dispatcher.kick()
            return 202, _queued(m)
        return 200, m.view()

    def _message(self, method: str, path: str, query: str, headers: Mapping[str, str],
                 body: bytes, now: float, priority: object, ref: object, not_before: object,
                 expires: float, campaign: str | None, doc: object = None) -> Message:
        """A send to queue, validated (``BadRequest``). ``expires``: from ``_expiry``;
        ``doc``: the body as JSON, if parsed already."""
        if not path.startswith("/") or path.startswith("/outbox"):
            raise BadRequest("path must be an instance API path such as /api/sendText")
        session = self._extract(method, path, query, headers, body, doc)
        if session is None:
            raise BadRequest("the request names no session")
        nb = parse_time(str(not_before), now, durations=False) if not_before is not None else 0.0
        request = Request(method, path, query, body, headers.get("content-type", ""),
                          headers.get("x-request-id", ""))
        return Message(message_id(session), session, request, created=now, seq=self._seq(now),
                       priority=_priority(priority), campaign=campaign, ref=_ref(ref),
                       not_before=nb, expires=expires)

    def _expiry(self, value: object, now: float) -> float:
        """``X-Outbox-Expires`` / ``expires`` (default ``outbox.ttl`` from now)."""
        if value is None:
            return now + self._config.current.outbox.ttl
        ex = parse_time(str(value), now, durations=True)
        if ex <= now:
            raise BadRequest("expires is in the past")
        return ex

    # -- campaigns -------------------------------------------------------------------------

    async def create_campaign(self, body: Any, headers: Mapping[str, str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest('the body must be {"name": ..., "messages": [...]}')
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise BadRequest("name must be a string of at most 200 characters")
        now = self._clock.wall()
        c = Campaign(await self.store.new_campaign_id(), name, created=now)
        messages = self._items(body, headers, now, c.id)
        await self.store.add_campaign(c)
        await self._queue(messages)
        return {"id": c.id, "queued": len(messages)}

    async def add_to_campaign(self, campaign_id: str, body: Any,
                              headers: Mapping[str, str]) -> dict[str, Any]:
        c = await self._campaign(campaign_id)
        if c.state in (CampaignState.CANCELLED, CampaignState.FINISHED):
            raise Conflict(f"campaign {campaign_id} is {c.state}")
        if not isinstance(body, dict):
            raise BadRequest('the body must be {"messages": [...]}')
        now = self._clock.wall()
        messages = self._items(body, headers, now, c.id)
        await self._queue(messages)
        return {"id": c.id, "queued": len(messages)}

    def _items(self, body: dict[str, Any], headers: Mapping[str, str], now: float,
               campaign: str) -> list[Message]:
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise BadRequest('"messages" must be a non-empty list')
        limit = self._config.current.outbox.max_batch
        if len(raw) > limit:
            raise BodyTooLarge(f"at most {limit} messages per call (outbox.max_batch); got {len(raw)}")
        items: list[Message] = []
        problems: list[dict[str, object]] = []
        sub = {"content-type": "application/json", "x-request-id": headers.get("x-request-id", "")}
        expires = self._expiry(body.get("expires"), now)  # the campaign's, for every item
        for i, entry in enumerate(raw):
            try:
                items.append(self._campaign_item(entry, sub, now, expires, campaign))
            except BadRequest as e:
                problems.append({"index": i, "message": e.message})
        if problems:
            raise InvalidItems(f"{len(problems)} of {len(raw)} messages are invalid; nothing was queued",
                               problems)
        return items

    def _campaign_item(self, entry: object, sub: Mapping[str, str], now: float,
                       expires: float, campaign: str) -> Message:
        """``sub``: the headers each item is sent with (JSON, the caller's request id)."""
        if not isinstance(entry, dict):
            raise BadRequest("each message must be an object")
        if not _FIELDS.issuperset(entry):
            raise BadRequest(f"unknown field(s): {sorted(entry.keys() - _FIELDS)}")
        path, method = entry.get("path"), entry.get("method", "POST")
        if not isinstance(path, str):
            raise BadRequest('"path" is required (e.g. /api/sendText)')
        if method not in ("POST", "PUT", "PATCH"):
            raise BadRequest("method must be POST, PUT or PATCH")
        path, _, query = path.partition("?")
        doc = entry.get("body", {})
        raw_body = _dumps(doc).encode()
        own = entry.get("expires")
        return self._message(method, path, query, sub, raw_body, now, entry.get("priority"),
                             entry.get("ref"), entry.get("not_before"),
                             expires if own is None else self._expiry(own, now), campaign, doc)

    async def _queue(self, messages: list[Message]) -> None:
        await self.store.add(messages)
        self.enqueued += len(messages)
        self.dispatcher.kick()

    async def _campaign(self, campaign_id: str) -> Campaign:
        c = await self.store.get_campaign(campaign_id)
        if c is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        return c

    async def campaign(self, campaign_id: str) -> dict[str, Any]:
        c = await self._campaign(campaign_id)
        return c.view(self._eta(c))

    def _eta(self, c: Campaign) -> float | None:
        left = c.counts.get("queued", 0) + c.counts.get("sending", 0)
        if not left or c.state is not CampaignState.RUNNING:
            return None
        delay = self._config.current.outbox.delay
        return round(left * (delay.min + delay.max) / 2, 1)  # one session's pace; a bound

    async def set_campaign_state(self, campaign_id: str, action: str) -> dict[str, Any]:
        c = await self._campaign(campaign_id)
        if c.state in (CampaignState.CANCELLED, CampaignState.FINISHED):
            raise Conflict(f"campaign {campaign_id} is {c.state}")
        if action == "pause":
            c.state = CampaignState.PAUSED
        elif action == "resume":
            c.state = CampaignState.RUNNING
            self.dispatcher.kick()
        else:
            # Its queued messages are cancelled as their sessions' turns come (none is sent
            # after this: a send checks its campaign as it begins), shown cancelled already.
            c.state, c.finished = CampaignState.CANCELLED, self._clock.wall()
            self.dispatcher.kick()
        await self.store.save_campaign(c)
        if c.state is not CampaignState.RUNNING:
            self.dispatcher.on_campaign(c)
        return c.view(self._eta(c))

    # -- messages --------------------------------------------------------------------------

    async def message(self, message_id: str) -> dict[str, Any]:
        return (await self._message_named(message_id)).view()

    async def _message_named(self, message_id: str) -> Message:
        m = await self.store.get(message_id)
        if m is None:
            raise NotFound(f"no message {message_id!r}")
        if m.state is State.QUEUED and m.campaign is not None:
            c = await self.store.get_campaign(m.campaign)
            if c is not None and c.state is CampaignState.CANCELLED:
                # Never sent now; stored as such when its session's turn comes.
                m.state, m.error, m.finished = State.CANCELLED, "its campaign was cancelled", c.finished
        return m

    async def _change(self, m: Message, old: State) -> None:
        ended = await self.store.change(m, old)
        if not ended.written:
            now = await self._message_named(m.id)
            raise Conflict(f"message {m.id} is {now.state} now")
        self.dispatcher.changed(m)
        if ended.finished is not None:
            self.dispatcher.on_campaign(ended.finished)

    async def cancel(self, message_id: str) -> dict[str, Any]:
        m = await self._message_named(message_id)
        if m.state is not State.QUEUED:
            raise Conflict(f"message {message_id} is {m.state}: only a queued message can be cancelled")
        m.state, m.error, m.finished = State.CANCELLED, "cancelled by the client", self._clock.wall()
        await self._change(m, State.QUEUED)
        return m.view()

    async def retry(self, message_id: str) -> dict[str, Any]:
        """Send a ``failed`` or ``unknown`` message again: the client's explicit decision."""
        m = await self._message_named(message_id)
        if m.state not in (State.FAILED, State.UNKNOWN):
            raise Conflict(f"message {message_id} is {m.state}: only failed or unknown can be retried")
        old = m.state
        now = self._clock.wall()
        m.state, m.error, m.finished, m.retry_at, m.waiting_since = State.QUEUED, None, None, 0.0, None
        if m.expires and m.expires <= now:
            m.expires = now + self._config.current.outbox.ttl
        await self._change(m, old)
        self.dispatcher.kick()
        return m.view()

    # -- the admin view ----------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        """``GET /admin/outbox``: totals by state, the deepest session queues, campaigns."""
        snap = await self.store.snapshot()
        now = self._clock.wall()
        cfg = self._config.current.outbox
        unacked, oldest_unacked = await self.store.unacked(now - cfg.ack_timeout, 20)
        return {
            "enabled": self._config.current.outbox.enabled,
            "durable": self.store.durable,
            "totals": await self.store.totals(),
            "oldest_seconds": None if snap.oldest is None else round(now - snap.oldest, 1),
            "sessions_paused": snap.sessions_paused,
            "paused_sessions": await self.store.paused_sessions(50),
            "deepest": [{"session": s, "queued": n} for s, n in await self.store.deepest(20)],
            # sent, and no message.ack within outbox.ack_timeout: the oldest ones
            "unacked": {"count": unacked, "oldest": oldest_unacked},
            "campaigns": [c.view(self._eta(c)) for c in await self.store.campaigns(50)],
        }

    # -- sessions --------------------------------------------------------------------------

    def _check_session(self, session: str) -> None:
        if not self._config.current.sessions.id_pattern.fullmatch(session):
            raise InvalidSessionId("not a valid session id")

    async def session(self, session: str) -> dict[str, Any]:
        self._check_session(session)
        pacing = await self.store.pacing(session)
        now = self._clock.wall()
        return {
            "session": session,
            "depth": await self.store.depth(session),
            "paused": await self.store.paused(session),
            "next_send_not_before": pacing.not_before or None,
            "sent": {w: sum(1 for t in pacing.sent if now - t < s)
                     for w, s in (("last_minute", 60), ("last_hour", 3600), ("last_day", 86400))},
        }

    async def pause_session(self, session: str, paused: bool) -> dict[str, Any]:
        self._check_session(session)
        await self.store.set_paused(session, paused)
        if not paused:
            await self.store.wake(session, self._clock.wall())
            self.dispatcher.kick()
        return await self.session(session)


def _queued(m: Message) -> dict[str, Any]:
    out = {"id": m.id, "session": m.session, "state": str(m.state)}
    if m.ref is not None:
        out["ref"] = m.ref
    return out
