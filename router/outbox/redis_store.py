"""The outbox in Redis: durable, shared by every router and worker.

Keys (prefix ``P`` = ``store.prefix`` + ``outbox:``); a session's keys carry the hash tag
``{s:<session>}`` so its queue, messages, lease and pacing share one Cluster slot:

- ``P{s:S}:q`` zset: queued (and sending) message ids, score = priority rank * 1e15 + seq
- ``P{s:S}:m`` / ``P{s:S}:b`` hashes: id -> message fields (JSON) / request body (bytes)
- ``P{s:S}:lease`` the router serving the session's turn; ``P{s:S}:pace`` / ``:sent`` pacing
- ``Pdue`` zset: session -> time of its next turn; ``Ppaused`` set; ``Ptotals`` hash: state ->
  messages; ``Pqueued_at`` zset: id -> enqueue time (the oldest); ``Pdone`` zset: id -> end
- ``Pc:<id>`` hash: a campaign (name, state, total, ``n:<state>`` counts); ``Pc:<id>:m`` its
  message ids; ``Pcampaigns`` zset by creation; ``Pidem:<sha256>`` an Idempotency-Key's
  fingerprint and message ids, with its TTL

Every write is one Lua script, so a message, its queue entry, the counts and its campaign
change together. (The scripts touch a session's keys and the global ones, which a Redis
Cluster would refuse; wa-router runs on one Redis or Sentinel, see README.)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import redis.exceptions as rexc
from redis.asyncio import Redis

from router.errors import StoreUnavailable
from router.outbox import codec
from router.outbox.model import FINAL, Campaign, Message, State, check, session_of
from router.outbox.store import IdempotencyKey, KeyReused, Pacing, Snapshot
from router.store.redis_client import RedisClients

_LOST: Final = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError, TimeoutError)
RANK: Final = 1e15  # priority rank * RANK + seq: high first, then enqueue order
LEASE_MS: Final = 10_000  # a turn's lease (renewed while a send runs); a router that dies frees
# its sessions after this
DAY: Final = 86400.0
MAX_IN_FLIGHT: Final = 48

_ADD = """
local P = ARGV[1]
local idem = ARGV[2]
if idem ~= '' then
  local prev = redis.call('GET', P .. 'idem:' .. idem)
  if prev then return prev end
end
local n = tonumber(ARGV[5])
local ids = {}
local i = 6
for _ = 1, n do
  local id, s, meta, body, score, cmp, created =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local t = P .. '{s:' .. s .. '}:'
  redis.call('HSET', t .. 'm', id, meta)
  redis.call('HSET', t .. 'b', id, body)
  redis.call('ZADD', t .. 'q', score, id)
  redis.call('ZADD', P .. 'due', 'NX', 0, s)
  redis.call('ZADD', P .. 'queued_at', created, id)
  redis.call('HINCRBY', P .. 'totals', 'queued', 1)
  if cmp ~= '' then
    redis.call('HINCRBY', P .. 'c:' .. cmp, 'n:queued', 1)
    redis.call('HINCRBY', P .. 'c:' .. cmp, 'total', 1)
    redis.call('SADD', P .. 'c:' .. cmp .. ':m', id)
  end
  ids[#ids + 1] = id
end
if idem ~= '' then
  redis.call('SET', P .. 'idem:' .. idem, ARGV[3] .. '\\n' .. table.concat(ids, ','), 'PX', ARGV[4])
end
return ''
"""

_SAVE = """
local P, s, id, meta, old, new, cmp, score, stamp =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local t = P .. '{s:' .. s .. '}:'
redis.call('HSET', t .. 'm', id, meta)
if old ~= new then
  redis.call('HINCRBY', P .. 'totals', old, -1)
  redis.call('HINCRBY', P .. 'totals', new, 1)
  if cmp ~= '' then
    redis.call('HINCRBY', P .. 'c:' .. cmp, 'n:' .. old, -1)
    redis.call('HINCRBY', P .. 'c:' .. cmp, 'n:' .. new, 1)
  end
end
if new == 'queued' or new == 'sending' then
  if redis.call('ZADD', t .. 'q', score, id) == 1 then
    -- back in the queue (an explicit retry): queued again, and due
    redis.call('ZADD', P .. 'queued_at', stamp, id)
    redis.call('ZADD', P .. 'due', 'NX', 0, s)
  end
else
  redis.call('ZREM', t .. 'q', id)
  redis.call('ZREM', P .. 'queued_at', id)
  redis.call('ZADD', P .. 'done', stamp, id)
end
return 1
"""

_DUE = """
local P, now, limit, holder, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local due = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, s in ipairs(due) do
  if redis.call('SET', P .. '{s:' .. s .. '}:lease', holder, 'NX', 'PX', ttl) then
    redis.call('ZADD', P .. 'due', now + tonumber(ttl) / 1000, s)
    out[#out + 1] = s
  end
end
return out
"""

_SCHEDULE = """
local P, s, at, holder = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local t = P .. '{s:' .. s .. '}:'
if redis.call('GET', t .. 'lease') == holder then redis.call('DEL', t .. 'lease') end
if at ~= '' then
  redis.call('ZADD', P .. 'due', at, s)
elseif redis.call('ZCARD', t .. 'q') == 0 then
  redis.call('ZREM', P .. 'due', s)
else
  redis.call('ZADD', P .. 'due', 0, s)  -- an add raced the end of the turn
end
return 1
"""

_RENEW = """
local t = ARGV[1] .. '{s:' .. ARGV[2] .. '}:'
if redis.call('GET', t .. 'lease') ~= ARGV[3] then return 0 end
redis.call('PEXPIRE', t .. 'lease', ARGV[4])
redis.call('ZADD', ARGV[1] .. 'due', 'XX', ARGV[5], ARGV[2])
return 1
"""

_SWEEP = """
local P, before, limit = ARGV[1], ARGV[2], ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', P .. 'done', '-inf', '(' .. before, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local s = string.sub(id, 32)
  local t = P .. '{s:' .. s .. '}:'
  redis.call('HDEL', t .. 'm', id)
  redis.call('HDEL', t .. 'b', id)
  redis.call('ZREM', P .. 'done', id)
end
local old = redis.call('ZRANGEBYSCORE', P .. 'campaigns', '-inf', '(' .. before, 'LIMIT', 0, limit)
for _, c in ipairs(old) do
  local f = redis.call('HGET', P .. 'c:' .. c, 'finished')
  if f and f ~= '' and tonumber(f) < tonumber(before) then
    redis.call('DEL', P .. 'c:' .. c, P .. 'c:' .. c .. ':m')
    redis.call('ZREM', P .. 'campaigns', c)
  end
end
return #ids
"""

_RECORD = """
local t = ARGV[1] .. '{s:' .. ARGV[2] .. '}:'
redis.call('ZADD', t .. 'sent', ARGV[3], ARGV[3])
redis.call('ZREMRANGEBYSCORE', t .. 'sent', '-inf', '(' .. ARGV[5])
redis.call('HSET', t .. 'pace', 'nb', ARGV[4])
return 1
"""


class RedisOutbox:
    durable = True

    def __init__(self, url: str, prefix: str, *, connect_timeout: float = 1.0,
                 op_timeout: float = 2.0) -> None:
        self.p = prefix + "outbox:"
        self._clients = RedisClients(url, connect_timeout=connect_timeout)
        self._op_timeout = op_timeout
        self._client: Redis | None = None
        # Bounded calls in flight: the dispatcher serves hundreds of sessions at once, and a
        # pool that runs out of connections fails calls instead of queueing them.
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"

    def __repr__(self) -> str:
        return f"<RedisOutbox prefix={self.p!r} {'open' if self._client else 'not connected'}>"

    async def open(self) -> None:
        self._client = self._clients.client(op_timeout=self._op_timeout, name="wa-router-outbox")
        self._add = self._client.register_script(_ADD)
        self._save = self._client.register_script(_SAVE)
        self._due = self._client.register_script(_DUE)
        self._schedule = self._client.register_script(_SCHEDULE)
        self._record = self._client.register_script(_RECORD)
        self._renew = self._client.register_script(_RENEW)
        self._sweep = self._client.register_script(_SWEEP)

    async def close(self) -> None:
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
        try:
            async with self._slots, asyncio.timeout(self._op_timeout * 2):
                return await make()
        except _LOST as e:
            raise StoreUnavailable("redis unavailable for the outbox") from e
        except rexc.RedisError as e:
            raise StoreUnavailable(f"redis refused an outbox command: {e}") from e

    def _t(self, session: str) -> str:
        return f"{self.p}{{s:{session}}}:"

    @staticmethod
    def _score(m: Message) -> str:
        return repr(m.priority.rank * RANK + m.seq)

    # -- messages --------------------------------------------------------------------------

    async def add(self, messages: Sequence[Message], idem: IdempotencyKey | None = None,
                  idem_ttl: float = 0.0) -> list[Message]:
        digest = ""
        if idem is not None:
            digest = hashlib.sha256(f"{idem.scope}\n{idem.key}".encode()).hexdigest()
        argv: list[Any] = [self.p, digest, idem.fingerprint if idem else "",
                           int(idem_ttl * 1000) or 1, len(messages)]
        for m in messages:
            argv += [m.id, m.session, codec.encode(m), m.request.body, self._score(m),
                     m.campaign or "", repr(m.created)]
        prev: Any = await self._call(lambda: self._add(args=argv))
        if prev:
            fingerprint, _, ids = (prev.decode() if isinstance(prev, bytes) else str(prev)).partition("\n")
            if idem is None or fingerprint != idem.fingerprint:
                raise KeyReused(idem.key if idem else "")
            found = [await self.get(i) for i in ids.split(",") if i]
            return [m for m in found if m is not None]
        return list(messages)

    async def get(self, message_id: str) -> Message | None:
        session = session_of(message_id)
        if session is None:
            return None
        t = self._t(session)
        r = self._redis()

        async def read() -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hget(t + "m", message_id)
                pipe.hget(t + "b", message_id)
                result: list[Any] = await pipe.execute()
                return result

        meta, body = await self._call(read)
        if meta is None:
            return None
        return codec.decode(message_id, meta, body or b"")

    async def save(self, m: Message, old: State) -> None:
        if old is not m.state:
            check(old, m.state)
        stamp = m.finished if m.state in FINAL and m.finished else m.created
        argv: list[Any] = [self.p, m.session, m.id, codec.encode(m), str(old), str(m.state),
                m.campaign or "", self._score(m), repr(stamp)]
        await self._call(lambda: self._save(args=argv))

    async def head(self, session: str) -> Message | None:
        t = self._t(session)
        ids: list[bytes] = await self._call(lambda: self._redis().zrange(t + "q", 0, 0))
        if not ids:
            return None
        return await self.get(ids[0].decode())

    # -- turns -----------------------------------------------------------------------------

    async def due(self, now: float, limit: int) -> list[str]:
        argv: list[Any] = [self.p, repr(now), limit, self.holder, LEASE_MS]
        got: list[bytes] = await self._call(lambda: self._due(args=argv))
        return [s.decode() for s in got]

    async def schedule(self, session: str, at: float | None) -> None:
        argv: list[Any] = [self.p, session, "" if at is None else repr(at), self.holder]
        await self._call(lambda: self._schedule(args=argv))

    async def renew(self, session: str, now: float) -> None:
        argv: list[Any] = [self.p, session, self.holder, LEASE_MS, repr(now + LEASE_MS / 1000)]
        await self._call(lambda: self._renew(args=argv))

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

    async def record_send(self, session: str, at: float, not_before: float) -> None:
        argv: list[Any] = [self.p, session, repr(at), repr(not_before), repr(at - DAY)]
        await self._call(lambda: self._record(args=argv))

    # -- campaigns -------------------------------------------------------------------------

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

    async def queued(self, campaign_id: str) -> list[Message]:
        ids: set[bytes] = await self._call(
            lambda: self._redis().smembers(self.p + "c:" + campaign_id + ":m"))
        out = []
        for i in ids:
            m = await self.get(i.decode())
            if m is not None and m.state is State.QUEUED:
                out.append(m)
        return out

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
                pipe.zrange(self.p + "queued_at", 0, 0, withscores=True)
                pipe.scard(self.p + "paused")
                result: list[Any] = await pipe.execute()
                return result

        queued, oldest, paused = await self._call(read)
        return Snapshot(int(queued or 0), oldest[0][1] if oldest else None, int(paused))

    async def deepest(self, limit: int) -> list[tuple[str, int]]:
        sessions: list[bytes] = await self._call(lambda: self._redis().zrange(self.p + "due", 0, -1))
        depths = []
        r = self._redis()
        for raw in sessions:
            s = raw.decode()
            n = int(await self._call(functools.partial(r.zcard, self._t(s) + "q")))
            if n:
                depths.append((s, n))
        return sorted(depths, key=lambda x: (-x[1], x[0]))[:limit]
