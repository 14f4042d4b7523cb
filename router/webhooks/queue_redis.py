"""Durable queue: one Redis Stream per target, one consumer group shared by every router.

Keys (``P`` is ``store.prefix``; ``K`` is ``filters.target_key(url)``, stable across
restarts and reloads):

- ``P wh:K`` (stream): the target's entries, fields ``i`` event id, ``s`` session ("" for
  none), ``e`` event name, ``b`` raw body, ``t`` received_at. Consumer group ``wa-router``
  (created at id 0, so entries written before the group existed are delivered too); each
  router process is one consumer (``consumer`` name unique per process).
- ``P wh:K:owner`` (string, PX expiry): the delivery lease of the target when ordering is
  ``per_session`` (see ``worker``).
- ``P wh:dead`` (stream): dead entries, fields ``k`` target key, ``u`` target URL, ``i s e
  b t`` as above, ``a`` attempts, ``st`` last status, ``er`` last error, ``d`` dead_at.

``add`` batches concurrent callers (``Batcher``) into one Lua call doing every XADD of the
batch (atomic like ``MULTI``/``EXEC``; measured 25k events/s vs 16k with a pipeline).
``finish`` writes dead entries, XACKs and XDELs in one ``MULTI``: a stream then holds exactly
its undelivered (unread or pending) entries, and ``XLEN`` is the backlog. ``trim``, a
safety net for entries
acknowledged without XDEL (by an operator or another tool), is a Lua script:
``XTRIM MINID`` to the oldest entry still pending in the group, or, when nothing is
pending, to just past the group's last-delivered id: an entry that is unread or pending
is never trimmed (nor is anything of a stream whose group is missing).

Every call is bounded (connect and reply timeouts, plus an overall deadline) and maps
connection trouble to ``StoreUnavailable``. A missing group (``NOGROUP``: the stream was
deleted, or Redis restarted empty) is re-created on the fly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import Redis

from router.batcher import Batcher
from router.errors import StoreUnavailable
from router.store.redis_client import RedisClients
from router.store.redis_commands import guarded
from router.webhooks.base import LEASE_OTHER, Done
from router.webhooks.model import DeadRecord, Entry, InboundEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
Fields = dict[Any, Any]  # redis-py's stream field types, loosely
GROUP: Final = "wa-router"
# Released entries get this idle time, so any consumer's next claim takes them.
_RELEASED_IDLE_MS: Final = 24 * 3600 * 1000
_CHUNK: Final = 500  # ids per XCLAIM, dead entries per replay round trip
_STALE_CONSUMER_MS: Final = 3600 * 1000


_TRIM = """
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local last = nil
for _, g in ipairs(groups) do
  local name, lid = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then lid = g[i + 1] end
  end
  if name == ARGV[1] then last = lid end
end
if not last then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local minid
if p[1] > 0 then
  minid = p[2]
else
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  if not ms then return 0 end
  -- past last-delivered; a huge seq would lose precision, so keep last-delivered then
  if #seq > 15 then minid = last else minid = ms .. '-' .. string.format('%d', tonumber(seq) + 1) end
end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
"""

# One EVALSHA for a whole batch: atomic like MULTI/EXEC, and far cheaper in the client than
# one packed/parsed XADD per event (the accept path's cost is mostly redis-py's, not Redis').
_ADD = """
for n = 1, #KEYS do
  local o = (n - 1) * 5
  redis.call('XADD', KEYS[n], '*', 'i', ARGV[o + 1], 's', ARGV[o + 2], 'e', ARGV[o + 3],
             'b', ARGV[o + 4], 't', ARGV[o + 5])
end
return #KEYS
"""

# 2: acquired now, 1: renewed, 0: held by another consumer
_LEASE = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""

_UNLEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _entry(qid: Any, f: dict[bytes, bytes]) -> Entry:
    session = f.get(b"s", b"").decode("utf-8", "replace")
    try:
        received = float(f.get(b"t", b"0"))
    except ValueError:
        received = 0.0
    return Entry(
        qid=_s(qid),
        event_id=f.get(b"i", b"").decode("utf-8", "replace"),
        session=session or None,
        event=f.get(b"e", b"").decode("utf-8", "replace"),
        body=f.get(b"b", b""),
        received_at=received,
    )


def _fields(ev_id: str, session: str | None, event: str, body: bytes, received_at: float) -> Fields:
    return {"i": ev_id, "s": session or "", "e": event, "b": body, "t": repr(received_at)}


def _dead_fields(d: DeadRecord) -> Fields:
    out = _fields(d.event_id, d.session, d.event, d.body, d.received_at)
    out.update({
        "k": d.target_key, "u": d.target_url, "a": d.attempts,
        "st": "" if d.last_status is None else str(d.last_status),
        "er": d.last_error or "", "d": repr(d.dead_at),
    })  # fmt: skip
    return out


def _dead_record(f: dict[bytes, bytes]) -> DeadRecord:
    e = _entry("", f)
    status = f.get(b"st", b"")
    return DeadRecord(
        target_key=f.get(b"k", b"").decode(), target_url=f.get(b"u", b"").decode("utf-8", "replace"),
        event_id=e.event_id, session=e.session, event=e.event, body=e.body,
        received_at=e.received_at, attempts=int(f.get(b"a", b"0") or 0),
        last_status=int(status) if status.isdigit() else None,
        last_error=f.get(b"er", b"").decode("utf-8", "replace") or None,
        dead_at=float(f.get(b"d", b"0") or 0),
    )  # fmt: skip


def _stream_items(reply: Any) -> list[tuple[Any, dict[bytes, bytes]]]:
    """XREADGROUP reply of one stream -> [(id, fields)]: RESP2 ``[[name, entries]]`` or
    redis-py's RESP3 shape ``{name: [entries]}`` (a URL may ask for ``protocol=3``)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


class RedisQueue:
    """``base.Queue`` on Redis Streams (module docstring)."""

    durable = True

    def __init__(
        self,
        url: str,
        prefix: str,
        consumer: str,
        *,
        connect_timeout: float = 1.0,
        op_timeout: float = 2.0,
        block: float = 1.0,
        max_batch: int = 1024,
        max_batch_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.prefix = prefix
        self.consumer = consumer
        self.dead_key = prefix + "wh:dead"
        self._clients = RedisClients(url, connect_timeout=connect_timeout)
        self._op_timeout = op_timeout
        self._block = block
        # A caller never waits longer than this (one retry included).
        self._deadline = 2 * (connect_timeout + op_timeout)
        self._cmd: Redis | None = None
        self._reader: Redis | None = None
        self._writer = Batcher[tuple[str, InboundEvent]](
            self._write, max_items=max_batch, max_bytes=max_batch_bytes, size=lambda item: len(item[1].body)
        )

    def stream(self, key: str) -> str:
        return f"{self.prefix}wh:{key}"

    def lease_key(self, key: str) -> str:
        return f"{self.prefix}wh:{key}:owner"

    @property
    def write_round_trips(self) -> int:
        return self._writer.flushes

    async def open(self) -> None:
        self._cmd = self._clients.client(op_timeout=self._op_timeout)
        # XREADGROUP BLOCK holds the socket silent for ``block`` seconds by design.
        self._reader = self._clients.client(op_timeout=self._block + self._op_timeout)
        self._add_script = self._cmd.register_script(_ADD)
        self._trim_script = self._cmd.register_script(_TRIM)
        self._lease_script = self._cmd.register_script(_LEASE)
        self._unlease_script = self._cmd.register_script(_UNLEASE)

    async def close(self) -> None:
        await self._writer.close()
        for c in (self._reader, self._cmd):
            if c is not None:
                try:
                    await c.aclose()
                except Exception:  # closing a dead connection must not fail the shutdown
                    log.debug("closing redis client failed", exc_info=True)
        self._cmd = self._reader = None
        await self._clients.close()

    # -- calls ------------------------------------------------------------------------

    def _client(self) -> Redis:
        if self._cmd is None:
            raise StoreUnavailable("webhook queue is closed")
        return self._cmd

    async def _call(self, make: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        return await guarded(make, deadline=deadline or self._deadline, what="webhooks")

    # -- writes -----------------------------------------------------------------------

    def add(self, items: Sequence[tuple[str, InboundEvent]], done: Done) -> None:
        self._writer.put(items, done)

    async def _write(self, items: list[tuple[str, InboundEvent]]) -> None:
        self._client()
        script = self._add_script
        keys: list[str] = []
        args: list[bytes | str] = []
        for key, ev in items:
            keys.append(self.stream(key))
            args += (ev.id, ev.session or "", ev.event, ev.body, repr(ev.received_at))
        await self._call(lambda: script(keys=keys, args=args))

    async def prepare(self, key: str) -> None:
        cmd = self._client()
        try:
            await self._call(lambda: cmd.xgroup_create(self.stream(key), GROUP, id="0", mkstream=True))
        except StoreUnavailable as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _regroup(self, key: str, e: BaseException) -> bool:
        """Re-create a vanished group; True when ``e`` was that case."""
        if "NOGROUP" not in str(e):
            return False
        log.warning("webhooks: consumer group of %s missing, re-creating it", self.stream(key))
        await self.prepare(key)
        return True

    # -- reads ------------------------------------------------------------------------

    async def read(self, key: str, count: int, block: float) -> list[Entry]:
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("webhook queue is closed")
        try:
            reply = await self._call(
                lambda: reader.xreadgroup(GROUP, self.consumer, {self.stream(key): ">"},
                                          count=count, block=max(1, int(block * 1000))),
                deadline=block + self._deadline,
            )  # fmt: skip
        except StoreUnavailable as e:
            if await self._regroup(key, e):
                return []
            raise
        return [_entry(qid, f) for qid, f in _stream_items(reply) if f is not None]

    async def claim(self, key: str, min_idle: float, cursor: str, count: int) -> tuple[str, list[Entry]]:
        cmd = self._client()
        try:
            reply = await self._call(
                lambda: cmd.xautoclaim(self.stream(key), GROUP, self.consumer,
                                       int(min_idle * 1000), start_id=cursor, count=count)
            )  # fmt: skip
        except StoreUnavailable as e:
            if await self._regroup(key, e):
                return "0-0", []
            raise
        nxt, items = _s(reply[0]), reply[1]
        return nxt, [_entry(qid, f) for qid, f in items if f is not None]

    async def _xclaim(self, key: str, qids: Sequence[str], idle: int | None) -> None:
        cmd = self._client()
        for i in range(0, len(qids), _CHUNK):
            chunk: list[Any] = list(qids[i : i + _CHUNK])  # redis-py types stream ids by release
            await self._call(functools.partial(
                cmd.xclaim, self.stream(key), GROUP, self.consumer, 0, chunk, idle=idle, justid=True
            ))

    async def touch(self, key: str, qids: Sequence[str]) -> None:
        await self._xclaim(key, qids, None)

    async def release(self, key: str, qids: Sequence[str]) -> None:
        await self._xclaim(key, qids, _RELEASED_IDLE_MS)

    async def finish(self, key: str, acks: Sequence[str], dead: Sequence[DeadRecord]) -> None:
        cmd = self._client()

        async def run() -> None:
            pipe = cmd.pipeline(transaction=True)
            for d in dead:
                pipe.xadd(self.dead_key, _dead_fields(d))
            if acks:
                pipe.xack(self.stream(key), GROUP, *acks)
                # Deleted now, not only when trimming reaches them: an entry retrying for
                # hours at the head of the stream would hold back MINID trimming.
                pipe.xdel(self.stream(key), *acks)
            await pipe.execute()

        await self._call(run)

    async def trim(self, key: str) -> int:
        script = self._trim_script
        return int(await self._call(lambda: script(keys=[self.stream(key)], args=[GROUP])))

    # -- lease ------------------------------------------------------------------------

    async def lease(self, key: str, ttl: float) -> int:
        script = self._lease_script
        if self._cmd is None:
            return LEASE_OTHER
        ms = max(1, int(ttl * 1000))
        return int(await self._call(lambda: script(keys=[self.lease_key(key)], args=[self.consumer, ms])))

    async def unlease(self, key: str) -> None:
        script = self._unlease_script
        if self._cmd is not None:
            await self._call(lambda: script(keys=[self.lease_key(key)], args=[self.consumer]))

    # -- views ------------------------------------------------------------------------

    async def backlog(self, keys: Sequence[str]) -> dict[str, int]:
        """XLEN: ``finish`` deletes what it acknowledges, so a stream holds exactly the
        unread and pending entries (the group's ``lag`` would not do: it becomes unknown
        once the stream's tail was deleted)."""
        cmd = self._client()

        async def run() -> list[Any]:
            pipe = cmd.pipeline(transaction=False)
            for key in keys:
                pipe.xlen(self.stream(key))
            return await pipe.execute()

        replies = await self._call(run)
        return {key: int(n) for key, n in zip(keys, replies, strict=True)}

    async def dead(self, limit: int) -> list[dict[str, Any]]:
        cmd = self._client()
        async def run() -> list[Any]:
            return list(await cmd.xrevrange(self.dead_key, count=max(0, limit)) or [])

        items = await self._call(run)
        return [_dead_record(f).view(_s(qid)) for qid, f in items]

    async def replay(self, ids: Sequence[str] | None, keys: Collection[str]) -> int:
        cmd = self._client()
        moved = 0
        if ids is not None:
            for i in range(0, len(ids), _CHUNK):
                chunk = list(ids[i : i + _CHUNK])

                async def fetch(chunk: list[str] = chunk) -> list[Any]:
                    pipe = cmd.pipeline(transaction=False)
                    for qid in chunk:
                        pipe.xrange(self.dead_key, qid, qid)
                    return await pipe.execute(raise_on_error=False)

                found = [r[0] for r in await self._call(fetch) if isinstance(r, list) and r]
                moved += await self._move_back(found, keys)
            return moved
        start = "-"
        while True:
            async def fetch_page(start: str = start) -> list[Any]:
                return list(await cmd.xrange(self.dead_key, start, "+", count=_CHUNK) or [])

            page = await self._call(fetch_page)
            if not page:
                return moved
            moved += await self._move_back(page, keys)
            start = "(" + _s(page[-1][0])

    async def _move_back(self, items: Sequence[tuple[Any, dict[bytes, bytes]]], keys: Collection[str]) -> int:
        cmd = self._client()
        todo = [(qid, _dead_record(f)) for qid, f in items]
        todo = [(qid, d) for qid, d in todo if d.target_key in keys]
        if not todo:
            return 0

        async def run() -> None:
            pipe = cmd.pipeline(transaction=True)
            for qid, d in todo:
                pipe.xadd(self.stream(d.target_key), _fields(d.event_id, d.session, d.event, d.body, d.received_at))
                pipe.xdel(self.dead_key, qid)
            await pipe.execute()

        await self._call(run)
        return len(todo)

    async def cleanup(self, key: str) -> None:
        cmd = self._client()
        try:
            consumers = await self._call(lambda: cmd.xinfo_consumers(self.stream(key), GROUP))
        except StoreUnavailable as e:
            if "NOGROUP" in str(e) or "no such key" in str(e):
                return
            raise
        for c in consumers:
            name = _s(c.get("name", b""))
            if name != self.consumer and int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > _STALE_CONSUMER_MS:
                await self._call(functools.partial(cmd.xgroup_delconsumer, self.stream(key), GROUP, name))
