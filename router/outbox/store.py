"""Where the outbox keeps messages, queues and pacing: the protocol, and the in-memory store
(one process; a start-up warning says queued messages are lost on restart). The Redis store
(durable, shared by every router and worker) implements the same protocol."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.outbox.model import Campaign, Message, State, check


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Figures for metrics and the admin API, read at most once a second."""

    backlog: int = 0  # queued messages
    oldest: float | None = None  # wall time the oldest queued message was queued
    sessions_paused: int = 0


class OutboxStore(Protocol):
    durable: bool

    async def add(self, messages: Sequence[Message], idem: IdempotencyKey | None = None,
                  idem_ttl: float = 0.0) -> list[Message]:
        """Queue ``messages`` (all or none). With ``idem``: the messages queued before
        under that key instead, if any (``KeyReused`` if their fingerprint differs)."""
        ...

    async def get(self, message_id: str) -> Message | None: ...

    async def save(self, m: Message, old: State) -> None:
        """Write ``m`` after a change from ``old`` (campaign counts follow)."""
        ...

    async def head(self, session: str) -> Message | None:
        """The session's next message in queue order (high priority first, then enqueue
        order), or None when it has none queued."""
        ...

    async def due(self, now: float, limit: int) -> list[str]:
        """Sessions whose turn has come (their time <= ``now``), earliest first, each now
        this process's to serve until it calls ``schedule`` (with several routers: a lease)."""
        ...

    async def schedule(self, session: str, at: float | None) -> None:
        """The session's next turn (earlier or later than the one it had); None when its
        queue is empty (the next ``add`` schedules it). Ends the turn ``due`` gave."""
        ...

    async def renew(self, session: str, now: float) -> None:
        """Keep serving a session whose turn takes long (a slow send)."""
        ...

    async def sweep(self, before: float, limit: int) -> int:
        """Forget up to ``limit`` messages (and campaigns) that ended before ``before``
        (``outbox.keep``); how many messages went."""
        ...

    async def pacing(self, session: str) -> Pacing: ...

    async def record_send(self, session: str, at: float, not_before: float) -> None: ...

    async def add_campaign(self, c: Campaign) -> None: ...

    async def get_campaign(self, campaign_id: str) -> Campaign | None: ...

    async def save_campaign(self, c: Campaign) -> None:
        """Its name, state and end (counts and total follow the messages)."""
        ...

    async def queued(self, campaign_id: str) -> list[Message]:
        """The campaign's messages still queued (to cancel them)."""
        ...

    async def set_paused(self, session: str, paused: bool) -> None: ...

    async def paused(self, session: str) -> bool: ...

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


class MemoryOutbox:
    """The outbox in this process's memory."""

    durable = False

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self._queues: dict[str, list[tuple[tuple[int, int], str]]] = {}  # session -> heap
        self._turns: list[tuple[float, int, str]] = []  # (at, seq, session), lazy
        self._turn_at: dict[str, float] = {}
        self._seq = itertools.count()
        self._pacing: dict[str, Pacing] = {}
        self._idem: dict[tuple[str, str], tuple[str, list[str]]] = {}
        self._campaigns: dict[str, Campaign] = {}
        self._paused: set[str] = set()

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
                return [self.messages[i] for i in ids if i in self.messages]
            self._idem[(idem.scope, idem.key)] = (idem.fingerprint, [m.id for m in messages])
        for m in messages:
            self.messages[m.id] = m
            if m.campaign is not None and m.campaign in self._campaigns:
                self._campaigns[m.campaign].counts[str(m.state)] += 1
                self._campaigns[m.campaign].total += 1
            if m.state is State.QUEUED:
                self._enqueue(m)
        return list(messages)

    def _enqueue(self, m: Message) -> None:
        heapq.heappush(self._queues.setdefault(m.session, []), (m.order, m.id))
        if m.session not in self._turn_at:
            self._set_turn(m.session, 0.0)

    def _set_turn(self, session: str, at: float) -> None:
        self._turn_at[session] = at
        heapq.heappush(self._turns, (at, next(self._seq), session))

    async def get(self, message_id: str) -> Message | None:
        return self.messages.get(message_id)

    async def save(self, m: Message, old: State) -> None:
        if old is not m.state:
            check(old, m.state)
            if m.campaign is not None and (c := self._campaigns.get(m.campaign)) is not None:
                c.counts[str(old)] -= 1
                c.counts[str(m.state)] += 1
        self.messages[m.id] = m
        if m.state is State.QUEUED and old is not State.QUEUED and old is not State.SENDING:
            self._enqueue(m)  # an explicit retry of a failed or unknown message

    async def head(self, session: str) -> Message | None:
        queue = self._queues.get(session)
        while queue:
            m = self.messages.get(queue[0][1])
            if m is not None and m.state in (State.QUEUED, State.SENDING):
                return m
            heapq.heappop(queue)  # finished, cancelled or expired meanwhile
        self._queues.pop(session, None)
        return None

    async def due(self, now: float, limit: int) -> list[str]:
        out: list[str] = []
        while self._turns and self._turns[0][0] <= now and len(out) < limit:
            at, _, session = heapq.heappop(self._turns)
            if self._turn_at.get(session) != at:
                continue  # rescheduled since
            del self._turn_at[session]
            out.append(session)
        return out

    async def schedule(self, session: str, at: float | None) -> None:
        if at is None:
            self._turn_at.pop(session, None)
        else:
            self._set_turn(session, at)

    async def renew(self, session: str, now: float) -> None:
        pass  # one process: nobody else could take the session

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
        return self._pacing.setdefault(session, Pacing())

    async def record_send(self, session: str, at: float, not_before: float) -> None:
        p = self._pacing.setdefault(session, Pacing())
        p.sent.append(at)
        p.not_before = not_before

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

    async def queued(self, campaign_id: str) -> list[Message]:
        return [m for m in self.messages.values()
                if m.campaign == campaign_id and m.state is State.QUEUED]

    async def set_paused(self, session: str, paused: bool) -> None:
        (self._paused.add if paused else self._paused.discard)(session)

    async def paused(self, session: str) -> bool:
        return session in self._paused

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
        queued = [m.created for m in self.messages.values() if m.state is State.QUEUED]
        return Snapshot(len(queued), min(queued, default=None), len(self._paused))

    async def deepest(self, limit: int) -> list[tuple[str, int]]:
        depth = {s: sum(1 for _, mid in q if (m := self.messages.get(mid)) is not None
                        and m.state is State.QUEUED) for s, q in self._queues.items()}
        return sorted(((s, n) for s, n in depth.items() if n), key=lambda x: (-x[1], x[0]))[:limit]

    async def campaigns(self, limit: int) -> list[Campaign]:
        return sorted(self._campaigns.values(), key=lambda c: -c.created)[:limit]
