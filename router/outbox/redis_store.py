"""The outbox in Redis: durable, shared by every router and worker.

Keys (prefix ``P`` = ``store.prefix`` + ``outbox:``); a session's keys carry the hash tag
``{s:<session>}`` so its queue, messages, lease and pacing share one Cluster slot:

- ``P{s:S}:q`` zset: queued (and sending) messages by their ULID, score = priority rank *
  1e15 + due sequence (``Message.score``)
- ``P{s:S}:m`` hash: ULID -> the message (``router.outbox.codec``: state, meta, body)
- ``P{s:S}:lease`` the router serving the session's turn; ``P{s:S}:pace`` / ``:sent`` pacing
- ``Pdue`` zset: session -> time of its next turn; ``Poldest`` zset: session -> due sequence
  of its oldest queued message; ``Ppaused`` set; ``Ptotals`` hash: state -> messages;
  ``Pdone`` zset: message id -> when it ended (for the sweep)
- ``Pc:<id>`` hash: a campaign (name, state, total, ``n:<state>`` counts); ``Pcampaigns``
  zset by creation; ``Pcampaign_numbers`` the counter behind campaign ids; ``Pidem:<sha256>`` an Idempotency-Key's fingerprint and message ids,
  with its TTL

A queued message costs one hash entry and one zset entry keyed by its 26-byte ULID, nothing
global: a million of them fit in a few hundred MB. Every write is one Lua script, so a
message, its queue entry, the counts and its campaign change together; writes from many
callers at once share one script call (``router.batcher``). A cancelled campaign's messages are
not touched one by one: each is cancelled when its session's turn comes (and shown
cancelled meanwhile). (The scripts touch a session's keys and the global ones, which a
Redis Cluster would refuse; wa-router runs on one Redis or Sentinel, see README.)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from router.batcher import Answered
from router.errors import StoreUnavailable
from router.outbox import codec
from router.outbox.model import (
    RANK,
    Campaign,
    CampaignState,
    Message,
    State,
    campaign_id,
    check,
    full_id,
    local_id,
    session_of,
    time_of,
)
from router.outbox.scripts import ADD, DEEPEST, OPS, RENEW, SWEEP, TURNS, WAKE
from router.outbox.store import (
    Began,
    Ended,
    IdempotencyKey,
    KeyReused,
    Pacing,
    Sighting,
    Snapshot,
    TurnEnd,
    TurnStart,
)
from router.store.packing import pack, unpack
from router.store.redis_client import RedisClients
from router.store.redis_commands import guarded

LEASE_MS: Final = 10_000  # a turn's lease (renewed while a send runs); a router that dies frees
# its sessions after this
MAX_IN_FLIGHT: Final = 48
DEEPEST_SCAN: Final = 10_000  # sessions looked at for the admin API's deepest queues

class RedisOutbox:
    durable = True

    def __init__(self, url: str, prefix: str, *, connect_timeout: float = 1.0,
                 op_timeout: float = 2.0, wall: Callable[[], float] = time.time) -> None:
        self.p = prefix + "outbox:"
        self._wall = wall
        self._clients = RedisClients(url, connect_timeout=connect_timeout)
        self._op_timeout = op_timeout
        self._client: Redis | None = None
        # Bounded calls in flight: the dispatcher serves hundreds of sessions at once, and a
        # pool that runs out of connections fails calls instead of queueing them.
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.next_due: float | None = None
        # Adds, and a turn's writes, from many callers at once go in one script call each.
        self._adds: Answered[bytes, bytes] = Answered(self._flush_adds, max_items=256,
                                                          name="outbox-adds")
        self._ops: Answered[bytes, bytes] = Answered(self._flush_ops, max_items=256,
                                                         name="outbox-writes")

    def __repr__(self) -> str:
        return f"<RedisOutbox prefix={self.p!r} {'open' if self._client else 'not connected'}>"

    async def open(self) -> None:
        self._client = self._clients.client(op_timeout=self._op_timeout, name="wa-router-outbox")
        self._add = self._client.register_script(ADD)
        self._turns = self._client.register_script(TURNS)
        self._ops_script = self._client.register_script(OPS)
        self._renew = self._client.register_script(RENEW)
        self._sweep = self._client.register_script(SWEEP)
        self._deepest = self._client.register_script(DEEPEST)
        self._wake = self._client.register_script(WAKE)

    async def close(self) -> None:
        await self._adds.batcher.close()
        await self._ops.batcher.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self._clients.close()

    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("the outbox store is not open")
        return self._client

    async def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command or script; every failure is ``StoreUnavailable``. Replies are
        ``Any``: redis-py types them differently from release to release, so each caller
        converts what it reads."""
        async with self._slots:
            return await guarded(make, deadline=self._op_timeout * 2, what="the outbox")

    def _t(self, session: str) -> str:
        return f"{self.p}{{s:{session}}}:"

    async def _batch(self, script: AsyncScript, calls: list[bytes]) -> list[bytes]:
        """One call of ``script`` for what many callers asked (see ``router.batcher``)."""
        argv: list[Any] = [self.p, repr(self._wall()), *calls]
        answer: list[bytes] = await self._call(lambda: script(args=argv))
        return answer

    async def _flush_adds(self, groups: list[bytes]) -> list[bytes]:
        return await self._batch(self._add, groups)

    async def _flush_ops(self, ops: list[bytes]) -> list[bytes]:
        return await self._batch(self._ops_script, ops)

    # -- messages --------------------------------------------------------------------------

    async def add(self, messages: Sequence[Message], idem: IdempotencyKey | None = None,
                  idem_ttl: float = 0.0) -> list[Message]:
        digest = ""
        if idem is not None:
            digest = hashlib.sha256(f"{idem.scope}\n{idem.key}".encode()).hexdigest()
        campaign = messages[0].campaign if messages else None
        parts = [pack(digest, idem.fingerprint if idem else "", str(int(idem_ttl * 1000) or 1),
                      campaign or "")]
        for m in messages:
            if m.campaign != campaign:
                raise ValueError("one add queues messages of one campaign")
            parts.append(_message_fields(m))
        prev = await self._adds(b"".join(parts))
        if prev:
            fingerprint, _, ids = prev.partition(b"\n")
            if idem is None or fingerprint.decode() != idem.fingerprint:
                raise KeyReused(idem.key if idem else "")
            pairs = unpack(ids)
            found = [await self.get(full_id(pairs[i].decode(), pairs[i + 1].decode()))
                     for i in range(0, len(pairs), 2)]
            return [m for m in found if m is not None]
        return list(messages)

    async def get(self, message_id: str) -> Message | None:
        session = session_of(message_id)
        if session is None:
            return None
        key = local_id(message_id)
        raw = await self._call(lambda: self._redis().hget(self._t(session) + "m", key))
        return None if raw is None else codec.decode(message_id, session, raw)

    # -- turns -----------------------------------------------------------------------------

    async def turns(self, now: float, limit: int, horizon: float) -> list[TurnStart]:
        argv: list[Any] = [self.p, repr(now), limit, self.holder, LEASE_MS, repr(horizon)]
        got: list[Any] = await self._call(lambda: self._turns(args=argv))
        last = got.pop()
        self.next_due = float(last) if last else None
        out = []
        for i in range(0, len(got), 7):
            session = got[i].decode()
            mid = full_id(got[i + 1].decode(), session)
            nb, sent, cs = got[i + 3], got[i + 6], got[i + 5]
            out.append(TurnStart(
                session, codec.decode(mid, session, got[i + 2]), float(nb) if nb else 0.0,
                [float(x) for x in sent.split(b",")] if sent else [], bool(got[i + 4]),
                CampaignState(cs.decode()) if cs else None))
        return out

    async def begin_send(self, m: Message) -> Began:
        answer = await self._ops(pack("B", m.session, local_id(m.id), self.holder,
                                      codec.encode_meta(m), m.campaign or "", repr(m.score)))
        return Began(answer.decode())

    async def end_turn(self, end: TurnEnd) -> Ended:
        m = end.message
        op = pack("E", end.session, local_id(m.id) if m else "", self.holder,
                  codec.CODE[end.old] if end.old else "", codec.encode_meta(m) if m else "",
                  (m.campaign if m else None) or "", repr(_stamp(m)) if m else "",
                  repr(m.score) if m else "", repr(end.at), local_id(end.head),
                  "" if end.sent_at is None else repr(end.sent_at), repr(end.not_before),
                  repr((end.sent_at or 0.0) - end.horizon))
        return await self._ended(await self._ops(op), m is not None)

    async def change(self, m: Message, old: State) -> Ended:
        if old is not m.state:
            check(old, m.state)
        answer = await self._ops(pack("C", m.session, local_id(m.id), codec.CODE[old],
                                      codec.encode_meta(m), m.campaign or "", repr(_stamp(m)),
                                      repr(m.score)))
        return await self._ended(answer, True)

    async def _ended(self, answer: bytes, wrote: bool) -> Ended:
        """``write``'s answer: '' written, 'state' / 'gone' not, 'finished:<campaign>'."""
        if answer.startswith(b"finished:"):
            return Ended(True, await self.get_campaign(answer[9:].decode()))
        return Ended(wrote and not answer)

    async def renew(self, sessions: Sequence[str], now: float) -> None:
        if sessions:
            argv: list[Any] = [self.p, repr(now), LEASE_MS, self.holder, *sessions]
            await self._call(lambda: self._renew(args=argv))

    async def track(self, m: Message, key: str | None) -> None:
        await self._ops(pack("T", m.session, local_id(m.id), m.wa_id or "", repr(m.sent_at or 0.0),
                             key or ""))

    async def by_wa(self, session: str, wa_id: str) -> Message | None:
        found = await self._call(lambda: self._redis().hget(self._t(session) + "wa", wa_id))
        return None if found is None else await self.get(full_id(found.decode(), session))

    async def acked(self, m: Message) -> bool:
        written = await self.change(m, State.SENT)
        await self._ops(pack("A", m.session, local_id(m.id)))
        return written.written

    async def unknown(self, m: Message, key: str, now: float, window: float) -> Sighting | None:
        answer = await self._ops(pack("U", m.session, local_id(m.id), key, repr(now), repr(window)))
        if not answer.startswith(b"seen:"):
            return None
        return Sighting(answer[5:].decode() or None)

    async def seen(self, session: str, key: str, wa_id: str | None, now: float,
                   window: float) -> str | None:
        answer = await self._ops(pack("S", session, key, repr(now), repr(window), wa_id or ""))
        return full_id(answer.decode(), session) if answer else None

    async def crossed(self, upto: float) -> int:
        return int(await self._ops(pack("X", repr(upto))))

    async def unacked(self, before: float, limit: int) -> tuple[int, list[str]]:
        r = self._redis()
        key = self.p + "unacked"
        n = await self._call(lambda: r.zcount(key, "-inf", f"({before!r}"))
        raw: list[bytes] = await self._call(
            lambda: r.zrangebyscore(key, "-inf", f"({before!r}", start=0, num=limit))
        ids = [full_id(x[:26].decode(), x[26:].decode()) for x in raw]
        return int(n), ids

    async def wake(self, session: str, now: float) -> None:
        argv: list[Any] = [self.p, session, repr(now)]
        await self._call(lambda: self._wake(args=argv))

    async def sweep(self, before: float, limit: int) -> int:
        argv: list[Any] = [self.p, repr(before), limit]
        return int(await self._call(lambda: self._sweep(args=argv)))

    async def pacing(self, session: str) -> Pacing:
        t = self._t(session)
        r = self._redis()

        async def read() -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hget(t + "pace", "nb")
                pipe.zrange(t + "sent", 0, -1, withscores=True)
                result: list[Any] = await pipe.execute()
                return result

        nb, sent = await self._call(read)
        return Pacing(float(nb) if nb else 0.0, [score for _, score in sent])

    # -- campaigns -------------------------------------------------------------------------

    async def new_campaign_id(self) -> str:
        number = await self._call(lambda: self._redis().incr(self.p + "campaign_numbers"))
        return campaign_id(int(number))

    async def add_campaign(self, c: Campaign) -> None:
        r = self._redis()

        async def write() -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hset(self.p + "c:" + c.id, mapping=codec.campaign_fields(c))
                pipe.zadd(self.p + "campaigns", {c.id: c.created})
                await pipe.execute()

        await self._call(write)

    async def get_campaign(self, campaign_id: str) -> Campaign | None:
        h: dict[bytes, bytes] = await self._call(
            lambda: self._redis().hgetall(self.p + "c:" + campaign_id))
        return codec.decode_campaign(campaign_id, h) if h else None

    async def save_campaign(self, c: Campaign) -> None:
        fields = codec.campaign_fields(c)
        del fields["created"]
        await self._call(lambda: self._redis().hset(self.p + "c:" + c.id, mapping=fields))

    async def campaigns(self, limit: int) -> list[Campaign]:
        ids: list[bytes] = await self._call(
            lambda: self._redis().zrevrange(self.p + "campaigns", 0, limit - 1))
        found = [await self.get_campaign(i.decode()) for i in ids]
        return [c for c in found if c is not None]

    # -- sessions and figures --------------------------------------------------------------

    async def set_paused(self, session: str, paused: bool) -> None:
        r = self._redis()
        key = self.p + "paused"
        await self._call(lambda: r.sadd(key, session) if paused else r.srem(key, session))

    async def paused(self, session: str) -> bool:
        return bool(await self._call(lambda: self._redis().sismember(self.p + "paused", session)))

    async def paused_sessions(self, limit: int) -> list[str]:
        r = self._redis()
        _, found = await self._call(lambda: r.sscan(self.p + "paused", 0, count=limit * 4))
        return sorted(s.decode() for s in found)[:limit]

    async def depth(self, session: str) -> dict[str, int]:
        t = self._t(session)
        r = self._redis()
        high = await self._call(lambda: r.zcount(t + "q", 0, RANK - 1))
        normal = await self._call(lambda: r.zcount(t + "q", RANK, "+inf"))
        return {"high": int(high), "normal": int(normal)}

    async def totals(self) -> dict[str, int]:
        h: dict[bytes, bytes] = await self._call(lambda: self._redis().hgetall(self.p + "totals"))
        out = {str(s): 0 for s in State}
        out.update({k.decode(): int(v) for k, v in h.items()})
        return out

    async def snapshot(self) -> Snapshot:
        r = self._redis()

        async def read() -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hget(self.p + "totals", "queued")
                pipe.zrange(self.p + "oldest", 0, 0, withscores=True)
                pipe.scard(self.p + "paused")
                result: list[Any] = await pipe.execute()
                return result

        queued, oldest, paused = await self._call(read)
        return Snapshot(int(queued or 0), time_of(oldest[0][1]) if oldest else None, int(paused))

    async def deepest(self, limit: int) -> list[tuple[str, int]]:
        got: list[Any] = await self._call(lambda: self._deepest(args=[self.p, DEEPEST_SCAN]))
        pairs = [(got[i].decode(), int(got[i + 1])) for i in range(0, len(got), 2)]
        return sorted(pairs, key=lambda x: (-x[1], x[0]))[:limit]


def _message_fields(m: Message) -> bytes:
    """``pack(ulid, session, score, value)`` for one message, in one format operation (a
    campaign packs thousands)."""
    session, score, value = m.session.encode(), repr(m.score).encode(), codec.encode(m)
    return b"26:%s%d:%s%d:%s%d:%s" % (m.id[4:30].encode(), len(session), session, len(score),
                                      score, len(value), value)


def _stamp(m: Message) -> float:
    """When a message ended (its place in the sweep), or when it was queued."""
    return m.finished if m.finished else m.created
