"""Kept responses in Redis, shared by every router and worker: one string per key,
``<prefix>idem:<digest>`` (``Record.encode``), with its TTL.

Every claim and every outcome (kept or released) queued at the same moment goes in one
script call: the outcomes first, then the claims, whose old values are the answer. At
most ``IN_FLIGHT`` (2) calls are in flight; what arrives meanwhile goes in the next, so
under load a batch is what accumulated during a round trip, and a key costs the data path
no Redis round trip of its own. (With one call in flight the proxy sat idle a fifth of the
time waiting for claims; two calls on two connections may reach Redis in either order,
which is safe: a claim succeeds only on an absent key, so a late write of an outcome can
only delay a retry with 409, never let a request through twice.) What a key costs the router is what matters (on the data path, the
router's CPU is the bottleneck): outcomes ride with the claims that are sent anyway (a
pipeline of SETs cost a second round trip per batch, a command packed and a reply parsed
in Python per key), each side of a call is one argument (the items packed one after
another: redis-py encodes arguments one by one, in Python), and a claim's answer calls the
proxy back directly (``claim_then``: no future, no task per request).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from router.errors import StoreUnavailable
from router.idempotency.model import Record
from router.store.redis_client import RedisClients
from router.store.redis_commands import LOST, unavailable

# ARGV[1]: the writes, ARGV[2]: the claims; each a run of packed (key, value, ttl ms)
# triples (``item``). A write is SET PX, or DEL when the value is empty (released); one
# that fails does not stop the others. A claim is SET NX GET PX. Answers the number of
# failed writes, then each claim's old value ('' when claimed).
CALL: Final = """
local find, sub = string.find, string.sub
local function field(a, i)
  local c = find(a, ':', i, true)
  local j = c + tonumber(sub(a, i, c - 1))
  return sub(a, c + 1, j), j + 1
end
local a, i, failed = ARGV[1], 1, 0
local key, value, ttl, r
while i <= #a do
  key, i = field(a, i)
  value, i = field(a, i)
  ttl, i = field(a, i)
  if value == '' then
    r = redis.pcall('DEL', key)
  else
    r = redis.pcall('SET', key, value, 'PX', ttl)
  end
  if type(r) == 'table' and r.err then failed = failed + 1 end
end
local out = {failed}
a, i = ARGV[2], 1
while i <= #a do
  key, i = field(a, i)
  value, i = field(a, i)
  ttl, i = field(a, i)
  out[#out + 1] = redis.call('SET', key, value, 'NX', 'GET', 'PX', ttl) or ''
end
return out
"""
IN_FLIGHT = 2  # calls in flight at most (see the module docstring)
RELEASED_TTL = b"1:0"  # a release (DEL) carries no TTL
CALL_SHA: Final = hashlib.sha1(CALL.encode()).hexdigest().encode()
# EVALSHA <sha> 0 <writes> <claims>, up to the writes' length
CALL_HEAD: Final = b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n" % CALL_SHA
MAX_CLAIMS = 512  # claims in one call at most
MAX_WRITES = 512  # writes in one call at most ...
MAX_WRITE_BYTES = 4 * 1024 * 1024  # ... and at most this much of them (but at least one)

# What a claim's answer is handed to: what the key held (None: claimed), or the error.
Answer = Callable[[Record | None, BaseException | None], None]

log = logging.getLogger("wa_router.idempotency")


def item(key: str, value: bytes, ttl: bytes) -> bytes:
    """One packed (key, value, ttl) triple, as ``router.store.packing.pack`` makes them
    (``ttl``: packed already, by ``packed_ttl``)."""
    k = key.encode()
    return b"%d:%s%d:%s%s" % (len(k), k, len(value), value, ttl)


@functools.lru_cache(maxsize=64)
def packed_ttl(ttl: float) -> bytes:
    """A TTL in seconds as the packed milliseconds a write carries (the same few values,
    made once)."""
    t = b"%d" % max(1, int(ttl * 1000))
    return b"%d:%s" % (len(t), t)


class RedisKeys:
    def __init__(self, clients: RedisClients, prefix: str, *, op_timeout: float = 2.0) -> None:
        self.p = prefix + "idem:"
        self._clients = clients
        self._op_timeout = op_timeout
        self._client: Redis | None = None
        self._claims: list[bytes] = []
        self._answers: list[Answer] = []  # one per claim, in order
        self._writes: list[bytes] = []
        self._flushes: list[asyncio.Future[None]] = []  # flush() callers
        self._writing: set[asyncio.Future[None]] = set()  # calls in flight with writes
        self._tasks: set[asyncio.Task[None]] = set()  # calls in flight (at most IN_FLIGHT)
        self._starting = False  # a task was created and has not taken its batch yet
        self.calls = 0  # script calls made (tests, benchmarks)

    def __repr__(self) -> str:
        return f"<RedisKeys prefix={self.p!r}>"

    async def open(self) -> None:
        self._client = self._clients.client(op_timeout=self._op_timeout, name="wa-router-idempotency")

    async def close(self) -> None:
        if self._tasks:  # the calls in flight and those queued
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _wake(self) -> None:
        if len(self._tasks) < IN_FLIGHT and not self._starting:
            self._starting = True
            task = asyncio.get_running_loop().create_task(self._run(), name="idempotency-keys")
            self._tasks.add(task)

    async def claim(self, digest: str, record: Record, ttl: float) -> Record | None:
        fut: asyncio.Future[Record | None] = asyncio.get_running_loop().create_future()

        def answer(found: Record | None, error: BaseException | None) -> None:
            if fut.done():  # the caller went away
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(found)

        self.claim_then(digest, record, ttl, answer)
        return await fut

    def claim_then(self, digest: str, record: Record, ttl: float, answer: Answer) -> None:
        """``claim``, its answer handed to ``answer`` (from the call's task, never from
        here): what the proxy uses, without a future or a task per request."""
        self._claims.append(item(self.p + digest, record.encode(), packed_ttl(ttl)))
        self._answers.append(answer)
        self._wake()

    def keep(self, digest: str, record: Record, ttl: float) -> None:
        self._writes.append(item(self.p + digest, record.encode(), packed_ttl(ttl)))
        self._wake()

    def release(self, digest: str) -> None:
        self._writes.append(item(self.p + digest, b"", RELEASED_TTL))
        self._wake()

    async def flush(self) -> None:
        """Wait until what was kept or released so far is written (tests, shutdown)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        earlier = list(self._writing)  # another call in flight may carry earlier writes
        self._flushes.append(fut)
        self._wake()
        await asyncio.shield(asyncio.gather(fut, *earlier))

    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("the idempotency store is not open")
        return self._client

    async def _run(self) -> None:
        lease: list[AbstractConnection] = []  # this task's connection, while it has calls
        try:
            # Let callers already scheduled in this loop iteration join the call.
            await asyncio.sleep(0)
            self._starting = False
            while self._claims or self._writes or self._flushes:
                await self._call(lease)
        finally:
            self._starting = False
            self._tasks.discard(asyncio.current_task())
            if lease and self._client is not None:
                await self._client.connection_pool.release(lease[0])

    async def _send(self, conn: AbstractConnection, writes: bytes, claims: bytes
                    ) -> list[int | bytes]:
        """One call, written on ``conn`` as it goes over the wire: redis-py's command path
        (pool, retry, encoding the arguments one by one) cost the proxy more than the
        script. The client's socket timeout bounds the write and the read."""
        packed = [CALL_HEAD, b"$%d\r\n" % len(writes), writes, b"\r\n$%d\r\n" % len(claims),
                  claims, b"\r\n"]
        try:
            await conn.send_packed_command(packed, check_health=False)
            try:
                reply = await conn.read_response()
            except rexc.NoScriptError:  # the script cache was flushed; nothing ran
                await self._redis().script_load(CALL)
                await conn.send_packed_command(packed, check_health=False)
                reply = await conn.read_response()
        except BaseException:
            # A reply may still be on its way: this connection cannot be used again as is.
            await conn.disconnect(nowait=True)
            raise
        if not isinstance(reply, list):
            raise StoreUnavailable(f"idempotency keys: unexpected reply {type(reply).__name__}")
        return reply

    async def _call(self, lease: list[AbstractConnection]) -> None:
        """One call with what is queued. Its answers are handed out right after this task
        has sent the next call (with what arrived meanwhile), so that Redis works on that
        one while the proxy forwards the requests whose keys it just claimed."""
        claims, answers = self._claims[:MAX_CLAIMS], self._answers[:MAX_CLAIMS]
        del self._claims[:MAX_CLAIMS], self._answers[:MAX_CLAIMS]
        n = size = 0
        for w in self._writes:
            if n and (n == MAX_WRITES or size + len(w) > MAX_WRITE_BYTES):
                break
            n += 1
            size += len(w)
        writes = self._writes[:n]
        del self._writes[:n]
        flushes: list[asyncio.Future[None]] = []
        if not self._writes:  # every write queued so far is in this call
            flushes, self._flushes = self._flushes, []
        error: BaseException | None = None
        reply: list[int | bytes] = []
        written: asyncio.Future[None] | None = None
        if writes:
            written = asyncio.get_running_loop().create_future()
            self._writing.add(written)
        try:
            if claims or writes:
                client = self._redis()
                self.calls += 1
                try:
                    if not lease:
                        # (Typed through a Callable: redis-py's pool leaves it untyped.)
                        get: Callable[[], Awaitable[AbstractConnection]] = (
                            client.connection_pool.get_connection)
                        lease.append(await get())
                    reply = await self._send(lease[0], b"".join(writes), b"".join(claims))
                except (*LOST, rexc.RedisError) as e:
                    raise unavailable(e, "idempotency keys") from e
                if len(reply) != 1 + len(claims):
                    raise StoreUnavailable(f"idempotency keys: {len(reply)} answers to "
                                           f"{len(claims)} claims")
        except asyncio.CancelledError:  # shutting down: nobody will answer them
            _deliver(answers, [], StoreUnavailable("the idempotency store closed"), [], 0)
            for done in flushes:
                done.cancel()
            raise
        except Exception as e:
            error = e
        finally:
            if written is not None:
                self._writing.discard(written)
                written.set_result(None)
        asyncio.get_running_loop().call_soon(_deliver, answers, reply, error, flushes, len(writes))


def _deliver(answers: list[Answer], reply: list[int | bytes], error: BaseException | None,
             flushes: list[asyncio.Future[None]], writes: int) -> None:
    """A call's outcome to its claims (in order) and ``flush()`` callers."""
    if error is None and reply and reply[0]:
        # The claims stay in flight and turn outcome_unknown once old: at worst a retry is
        # told so, never a second send.
        log.warning("idempotency: keeping %s outcome(s) failed", reply[0])
    elif error is not None and writes:
        log.warning("idempotency: keeping %d outcome(s) failed: %s", writes, error)
    for i, answer in enumerate(answers, 1):
        try:
            if error is not None:
                answer(None, error)
            else:
                found = reply[i]
                answer(Record.decode(found) if isinstance(found, bytes) and found else None, None)
        except Exception:  # one caller's bug must not strand the others
            log.exception("idempotency: a claim's answer failed")
    for done in flushes:
        if not done.done():
            done.set_result(None)

