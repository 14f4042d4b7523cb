"""Where the outbox keeps messages, queues and pacing: the protocol, and the in-memory store
(one process; a start-up warning says queued messages are lost on restart). The Redis store
(durable, shared by every router and worker) implements the same protocol."""

from __future__ import annotations

import bisect
import copy
import enum
import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.outbox.model import (
    FINAL,
    Campaign,
    CampaignState,
    Message,
    State,
    campaign_id,
    check,
    time_of,
)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """``Idempotency-Key`` as scoped for the outbox: client key and session included."""

    scope: str
    key: str
    fingerprint: str  # of the request body: the same key with another body is refused


class KeyReused(Exception):
    """The same idempotency key came with another body."""


@dataclass(slots=True)
class Pacing:
    not_before: float = 0.0  # the end of the last send's gap
    sent: list[float] = field(default_factory=list)  # recent send times, ascending


@dataclass(slots=True)
class TurnStart:
    """A session's turn as ``turns`` hands it out: the session is this process's to serve
    (with several routers: a lease) until ``end_turn``."""

    session: str
    head: Message  # the next message in queue order (a session with none gets no turn)
    not_before: float  # pacing: the end of the last send's gap
    sent: list[float]  # pacing: send times within the longest limited window, ascending
    paused: bool  # the session is paused
    campaign: CampaignState | None  # the head's campaign's state


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """What a turn leaves behind, written at once: the message's new state (compared and
    set: ``old`` must still be stored), a send counted for pacing, the session's next turn."""

    session: str
    at: float  # the next turn (sooner, if another message became the head meanwhile)
    head: str  # the id the turn decided on
    message: Message | None = None
    old: State | None = None
    sent_at: float | None = None
    not_before: float = 0.0  # with sent_at: the end of the pacing gap
    horizon: float = 86400.0  # with sent_at: send times older than this are forgotten


@dataclass(frozen=True, slots=True)
class Ended:
    """What ``end_turn`` or ``change`` wrote."""

    written: bool  # the message's change (False: none, or its state had changed meanwhile)
    finished: Campaign | None = None  # the campaign this change finished


class Began(enum.StrEnum):
    """``begin_send``'s answer: go ahead, or why not."""

    OK = "ok"
    LOST = "lost"  # no longer ours: the lease expired, or the message changed meanwhile
    CANCELLED = "cancelled"  # its campaign was cancelled
    PAUSED = "paused"  # its campaign was paused


@dataclass(frozen=True, slots=True)
class Sighting:
    """A ``message.any`` that settles an ``unknown`` message: the instance's id for it."""

    wa_id: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Figures for metrics and the admin API, read at most once a second."""

    backlog: int = 0  # queued messages
    oldest: float | None = None  # wall time the oldest queued message was queued
    sessions_paused: int = 0


class OutboxStore(Protocol):
    durable: bool
    next_due: float | None  # when the next session is due, as of the last ``turns``

    async def add(self, messages: Sequence[Message], idem: IdempotencyKey | None = None,
                  idem_ttl: float = 0.0) -> list[Message]:
        """Queue ``messages`` (all or none). With ``idem``: the messages queued before
        under that key instead, if any (``KeyReused`` if their fingerprint differs)."""
        ...

    async def get(self, message_id: str) -> Message | None: ...

    async def turns(self, now: float, limit: int, horizon: float) -> list[TurnStart]:
        """Up to ``limit`` sessions whose turn has come, earliest first, each with what its
        turn decides on; ``horizon``: how far back send times matter (0: none)."""
        ...

    async def begin_send(self, m: Message) -> Began:
        """Write ``m`` (now ``sending``) if it is still queued, its session still this
        process's, and its campaign neither paused nor cancelled."""
        ...

    async def end_turn(self, end: TurnEnd) -> Ended:
        """Write what the turn did and schedule the session's next one (none while its
        queue is empty: the next ``add`` schedules it)."""
        ...

    async def change(self, m: Message, old: State) -> Ended:
        """Write ``m`` outside any turn (a cancel, an explicit retry) if its stored state is
        still ``old``."""
        ...

    async def renew(self, sessions: Sequence[str], now: float) -> None:
        """Keep serving sessions whose turns take long (slow sends)."""
        ...

    # -- delivery (``router.outbox.delivery``) ------------------------------------------------

    async def track(self, m: Message, key: str | None) -> None:
        """``m`` was sent (``wa_id``, ``sent_at``): its acks find it; unacked until one. A
        ``message.any`` remembered for its ``key`` (chat and text) was its own: forgotten."""
        ...

    async def by_wa(self, session: str, wa_id: str) -> Message | None: ...

    async def acked(self, m: Message) -> bool:
        """Write ``m``'s delivery (it is still ``sent``); no longer unacked."""
        ...

    async def unknown(self, m: Message, key: str, now: float, window: float) -> Sighting | None:
        """``m`` just became ``unknown``: its ``message.any`` (``key``) if one came within
        ``window`` already (taken), else None and it waits for it."""
        ...

    async def seen(self, session: str, key: str, wa_id: str | None, now: float,
                   window: float) -> str | None:
        """A ``message.any`` the session sent: the id of the ``unknown`` message it settles
        (taken off the waiting list), else remembered for ``window`` (unless ``wa_id`` is a
        message already sent: it was that one's)."""
        ...

    async def crossed(self, upto: float) -> int:
        """Sent messages still unacked that were sent before ``upto`` and not counted by any
        router before (each is counted once, fleet-wide)."""
        ...

    async def unacked(self, before: float, limit: int) -> tuple[int, list[str]]:
        """Sent before ``before`` and never acked: how many, and the oldest ids."""
        ...

    async def wake(self, session: str, now: float) -> None:
        """Give the session a turn now (it was resumed), unless one is under way."""
        ...

    async def sweep(self, before: float, limit: int) -> int:
        """Forget up to ``limit`` messages (and campaigns) that ended before ``before``
        (``outbox.keep``); how many messages went."""
        ...

    async def pacing(self, session: str) -> Pacing: ...

    async def new_campaign_id(self) -> str:
        """A campaign id no other router hands out (``model.campaign_id``)."""
        ...

    async def add_campaign(self, c: Campaign) -> None: ...

    async def get_campaign(self, campaign_id: str) -> Campaign | None: ...

    async def save_campaign(self, c: Campaign) -> None:
        """Its name, state and end (counts and total follow the messages)."""
        ...

    async def set_paused(self, session: str, paused: bool) -> None: ...

    async def paused(self, session: str) -> bool: ...

    async def paused_sessions(self, limit: int) -> list[str]:
        """Up to ``limit`` paused sessions, sorted."""
        ...

    async def depth(self, session: str) -> dict[str, int]:
        """Queued messages by priority."""
        ...

    async def totals(self) -> dict[str, int]:
        """Messages by state (those still kept)."""
        ...

    async def snapshot(self) -> Snapshot: ...

    async def deepest(self, limit: int) -> list[tuple[str, int]]:
        """The sessions with the most queued messages: (session, queued)."""
        ...

    async def campaigns(self, limit: int) -> list[Campaign]:
        """The newest campaigns."""
        ...


def counts_changed(c: Campaign, old: State, new: State) -> bool:
    """Move one message of ``c`` from ``old`` to ``new``; True when that finished a running
    campaign (nothing of it queued or sending any more)."""
    c.counts[str(old)] -= 1
    c.counts[str(new)] += 1
    return (new in FINAL and c.state is CampaignState.RUNNING
            and not c.counts["queued"] and not c.counts["sending"])


class MemoryOutbox:
    """The outbox in this process's memory."""

    durable = False

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self._queues: dict[str, list[tuple[tuple[int, int], str]]] = {}  # session -> heap
        self._turns: list[tuple[float, int, str]] = []  # (at, seq, session), lazy
        self._turn_at: dict[str, float] = {}
        self._serving: set[str] = set()
        self._seq = itertools.count()
        self._pacing: dict[str, Pacing] = {}
        self._idem: dict[tuple[str, str], tuple[str, list[str]]] = {}
        self._campaigns: dict[str, Campaign] = {}
        self._paused: set[str] = set()
        self._campaign_numbers = itertools.count(1)
        self.next_due: float | None = None
        self._wa: dict[tuple[str, str], str] = {}  # (session, wa id) -> message id
        self._unacked: dict[str, float] = {}  # message id -> sent at
        self._counted = float("-inf")
        self._unknown: dict[tuple[str, str], str] = {}  # (session, match key) -> message id
        # (session, match key) -> (seen at, the instance's id of that message)
        self._seen: dict[tuple[str, str], tuple[float, str | None]] = {}

    def __repr__(self) -> str:
        return (f"<MemoryOutbox {len(self.messages)} messages, "
                f"{sum(map(len, self._queues.values()))} queued in {len(self._queues)} sessions>")

    async def add(self, messages: Sequence[Message], idem: IdempotencyKey | None = None,
                  idem_ttl: float = 0.0) -> list[Message]:
        if idem is not None:
            known = self._idem.get((idem.scope, idem.key))
            if known is not None:
                fingerprint, ids = known
                if fingerprint != idem.fingerprint:
                    raise KeyReused(idem.key)
                return [copy.copy(self.messages[i]) for i in ids if i in self.messages]
            self._idem[(idem.scope, idem.key)] = (idem.fingerprint, [m.id for m in messages])
        for m in messages:
            self.messages[m.id] = m = copy.copy(m)  # callers change theirs; this one is stored
            if m.campaign is not None and m.campaign in self._campaigns:
                self._campaigns[m.campaign].counts[str(m.state)] += 1
                self._campaigns[m.campaign].total += 1
            self._enqueue(m)
        return list(messages)

    def _enqueue(self, m: Message) -> None:
        queue = self._queues.setdefault(m.session, [])
        heapq.heappush(queue, (m.order, m.id))
        if m.session in self._serving:
            return  # its turn ends with a look at the head
        if m.session not in self._turn_at or queue[0][1] == m.id:
            # A new head is looked at now, or when it is due if scheduled for later.
            self._set_turn(m.session, m.not_before if m.not_before > m.created + 1 else 0.0)

    def _set_turn(self, session: str, at: float) -> None:
        self._turn_at[session] = at
        heapq.heappush(self._turns, (at, next(self._seq), session))

    def _head(self, session: str) -> Message | None:
        queue = self._queues.get(session)
        while queue:
            m = self.messages.get(queue[0][1])
            if m is not None and m.state in (State.QUEUED, State.SENDING):
                return m
            heapq.heappop(queue)  # finished, cancelled or expired meanwhile
        self._queues.pop(session, None)
        return None

    async def get(self, message_id: str) -> Message | None:
        m = self.messages.get(message_id)
        return None if m is None else copy.copy(m)

    async def turns(self, now: float, limit: int, horizon: float) -> list[TurnStart]:
        try:
            return self._take_turns(now, limit, horizon)
        finally:
            while self._turns and self._turn_at.get(self._turns[0][2]) != self._turns[0][0]:
                heapq.heappop(self._turns)  # rescheduled since
            self.next_due = self._turns[0][0] if self._turns else None

    def _take_turns(self, now: float, limit: int, horizon: float) -> list[TurnStart]:
        out: list[TurnStart] = []
        while self._turns and self._turns[0][0] <= now and len(out) < limit:
            at, _, session = heapq.heappop(self._turns)
            if self._turn_at.get(session) != at:
                continue  # rescheduled since
            del self._turn_at[session]
            head = self._head(session)
            if head is None:
                continue
            self._serving.add(session)
            p = self._pacing.get(session) or Pacing()
            c = self._campaigns.get(head.campaign) if head.campaign else None
            out.append(TurnStart(session, copy.copy(head), p.not_before,
                                 [t for t in p.sent if t > now - horizon] if horizon else [],
                                 session in self._paused, c.state if c else None))
        return out

    async def begin_send(self, m: Message) -> Began:
        kept = self.messages.get(m.id)
        if m.session not in self._serving or kept is None or kept.state is not State.QUEUED:
            return Began.LOST
        c = self._campaigns.get(m.campaign) if m.campaign else None
        if c is not None and c.state in (CampaignState.CANCELLED, CampaignState.PAUSED):
            return Began.CANCELLED if c.state is CampaignState.CANCELLED else Began.PAUSED
        self._write(m, State.QUEUED)
        return Began.OK

    def _write(self, m: Message, old: State) -> Campaign | None:
        """Store ``m`` after a change from ``old``; the campaign that finished, if any."""
        finished = None
        if old is not m.state:
            check(old, m.state)
            c = self._campaigns.get(m.campaign) if m.campaign is not None else None
            if c is not None and counts_changed(c, old, m.state):
                c.state, c.finished = CampaignState.FINISHED, m.finished
                finished = c
        self.messages[m.id] = m = copy.copy(m)
        if m.state is State.QUEUED and old in (State.FAILED, State.UNKNOWN):
            self._enqueue(m)  # an explicit retry
        return finished

    async def end_turn(self, end: TurnEnd) -> Ended:
        ended = Ended(False)
        if end.message is not None:
            kept = self.messages.get(end.message.id)
            old = end.old or (kept.state if kept is not None else end.message.state)
            ended = await self.change(end.message, old)
        if end.sent_at is not None:
            p = self._pacing.setdefault(end.session, Pacing())
            p.sent.append(end.sent_at)
            p.not_before = end.not_before
            del p.sent[:bisect.bisect_right(p.sent, end.sent_at - end.horizon)]
        self._serving.discard(end.session)
        head = self._head(end.session)
        if head is not None:
            decided = self.messages.get(end.head)
            went_ahead = head.id != end.head and decided is not None and decided.state is State.QUEUED
            self._set_turn(end.session, 0.0 if went_ahead else end.at)  # a new head: at once
        else:
            self._turn_at.pop(end.session, None)
        return ended

    async def change(self, m: Message, old: State) -> Ended:
        kept = self.messages.get(m.id)
        if kept is None or kept.state is not old:
            return Ended(False)
        return Ended(True, self._write(m, old))

    async def renew(self, sessions: Sequence[str], now: float) -> None:
        pass  # one process: nobody else could take the session

    async def wake(self, session: str, now: float) -> None:
        if session not in self._serving and self._head(session) is not None:
            self._set_turn(session, now)

    async def track(self, m: Message, key: str | None) -> None:
        if m.wa_id is not None:
            self._wa[(m.session, m.wa_id)] = m.id
        self._unacked[m.id] = m.sent_at or 0.0
        if key is not None:
            seen = self._seen.get((m.session, key))
            if seen is not None and (m.wa_id is None or seen[1] in (None, m.wa_id)):
                del self._seen[(m.session, key)]  # it was this message's own

    async def by_wa(self, session: str, wa_id: str) -> Message | None:
        mid = self._wa.get((session, wa_id))
        return None if mid is None else await self.get(mid)

    async def acked(self, m: Message) -> bool:
        self._unacked.pop(m.id, None)
        return (await self.change(m, State.SENT)).written

    async def unknown(self, m: Message, key: str, now: float, window: float) -> Sighting | None:
        seen = self._seen.pop((m.session, key), None)
        if seen is not None and seen[0] >= now - window:
            return Sighting(seen[1])
        self._unknown[(m.session, key)] = m.id
        return None

    async def seen(self, session: str, key: str, wa_id: str | None, now: float,
                   window: float) -> str | None:
        if wa_id is not None and (session, wa_id) in self._wa:
            return None  # the message.any of a message sent (and answered) already
        waiting = self._unknown.pop((session, key), None)
        if waiting is None:
            for old in [k for k, (at, _) in self._seen.items() if at < now - window]:
                del self._seen[old]
            self._seen[(session, key)] = (now, wa_id)
        return waiting

    async def crossed(self, upto: float) -> int:
        n = sum(1 for at in self._unacked.values() if self._counted < at <= upto)
        self._counted = max(self._counted, upto)
        return n

    async def unacked(self, before: float, limit: int) -> tuple[int, list[str]]:
        old = sorted((at, mid) for mid, at in self._unacked.items() if at < before)
        return len(old), [mid for _, mid in old[:limit]]

    async def sweep(self, before: float, limit: int) -> int:
        old = [m.id for m in self.messages.values()
               if m.finished is not None and m.finished < before][:limit]
        for mid in old:
            del self.messages[mid]
        for cid, c in list(self._campaigns.items()):
            if c.finished is not None and c.finished < before:
                del self._campaigns[cid]
        return len(old)

    async def pacing(self, session: str) -> Pacing:
        p = self._pacing.get(session) or Pacing()
        return Pacing(p.not_before, list(p.sent))

    async def new_campaign_id(self) -> str:
        return campaign_id(next(self._campaign_numbers))

    async def add_campaign(self, c: Campaign) -> None:
        self._campaigns[c.id] = c

    async def get_campaign(self, campaign_id: str) -> Campaign | None:
        return self._campaigns.get(campaign_id)

    async def save_campaign(self, c: Campaign) -> None:
        kept = self._campaigns.get(c.id)
        if kept is not None and kept is not c:
            kept.state, kept.finished, kept.name = c.state, c.finished, c.name
        else:
            self._campaigns[c.id] = c

    async def set_paused(self, session: str, paused: bool) -> None:
        (self._paused.add if paused else self._paused.discard)(session)

    async def paused(self, session: str) -> bool:
        return session in self._paused

    async def paused_sessions(self, limit: int) -> list[str]:
        return sorted(self._paused)[:limit]

    async def depth(self, session: str) -> dict[str, int]:
        out = {"high": 0, "normal": 0}
        for _, mid in self._queues.get(session, ()):
            m = self.messages.get(mid)
            if m is not None and m.state is State.QUEUED:
                out[str(m.priority)] += 1
        return out

    async def totals(self) -> dict[str, int]:
        out = {str(s): 0 for s in State}
        for m in self.messages.values():
            out[str(m.state)] += 1
        return out

    async def snapshot(self) -> Snapshot:
        queued = [m.order[1] for m in self.messages.values() if m.state is State.QUEUED]
        oldest = min(queued, default=None)
        return Snapshot(len(queued), None if oldest is None else time_of(oldest), len(self._paused))

    async def deepest(self, limit: int) -> list[tuple[str, int]]:
        depth = {s: sum(1 for _, mid in q if (m := self.messages.get(mid)) is not None
                        and m.state is State.QUEUED) for s, q in self._queues.items()}
        return sorted(((s, n) for s, n in depth.items() if n), key=lambda x: (-x[1], x[0]))[:limit]

    async def campaigns(self, limit: int) -> list[Campaign]:
        return sorted(self._campaigns.values(), key=lambda c: -c.created)[:limit]
