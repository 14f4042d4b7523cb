"""Kept responses in Redis, shared by every router and worker: one string per key,
``<prefix>idem:<digest>`` (``Record.encode``), with its TTL.

Every claim and every outcome (kept or released) queued at the same moment goes in one
script call: the outcomes first, then the claims, whose old values are the answer. One
call is in flight at a time; what arrives meanwhile goes in the next, so under load a
batch is what accumulated during one round trip, and a key costs the data path no Redis
round trip of its own. What a key costs the router is what matters (on the data path, the
router's CPU is the bottleneck): outcomes ride with the claims that are sent anyway (a
pipeline of SETs cost a second round trip per batch, a command packed and a reply parsed
in Python per key), each side of a call is one argument (the items packed one after
another: redis-py encodes arguments one by one, in Python), and a claim's answer calls the
proxy back directly (``claim_then``: no future, no task per request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from redis.asyncio import Redis

from router.errors import StoreUnavailable
from router.idempotency.model import Record
from router.store.redis_client import RedisClients
from router.store.redis_commands import guarded

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
MAX_CLAIMS = 512  # claims in one call at most
MAX_WRITES = 512  # writes in one call at most ...
MAX_WRITE_BYTES = 4 * 1024 * 1024  # ... and at most this much of them (but at least one)

# What a claim's answer is handed to: what the key held (None: claimed), or the error.
Answer = Callable[[Record | None, BaseException | None], None]

log = logging.getLogger("wa_router.idempotency")


def item(key: str, value: bytes, ttl_ms: int) -> bytes:
    """One packed (key, value, ttl) triple, as ``router.store.packing.pack`` makes them."""
    k = key.encode()
    t = b"%d" % ttl_ms
    return b"%d:%s%d:%s%d:%s" % (len(k), k, len(value), value, len(t), t)


def ttl_ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


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
        self._task: asyncio.Task[None] | None = None
        self.calls = 0  # script calls made (tests, benchmarks)

    def __repr__(self) -> str:
        return f"<RedisKeys prefix={self.p!r}>"

    async def open(self) -> None:
        self._client = self._clients.client(op_timeout=self._op_timeout, name="wa-router-idempotency")
        self._script = self._client.register_script(CALL)

    async def close(self) -> None:
        if self._task is not None:  # the call in flight and those queued
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _wake(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="idempotency-keys")

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
        self._claims.append(item(self.p + digest, record.encode(), ttl_ms(ttl)))
        self._answers.append(answer)
        self._wake()

    def keep(self, digest: str, record: Record, ttl: float) -> None:
        self._writes.append(item(self.p + digest, record.encode(), ttl_ms(ttl)))
        self._wake()

    def release(self, digest: str) -> None:
        self._writes.append(item(self.p + digest, b"", 0))
        self._wake()

    async def flush(self) -> None:
        """Wait until what was kept or released so far is written (tests, shutdown)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append(fut)
        self._wake()
        await asyncio.shield(fut)

    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("the idempotency store is not open")
        return self._client

    async def _run(self) -> None:
        try:
            # Let callers already scheduled in this loop iteration join the call.
            await asyncio.sleep(0)
            while self._claims or self._writes or self._flushes:
                await self._call()
        finally:
            self._task = None

    async def _call(self) -> None:
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
        try:
            if claims or writes:
                self._redis()
                self.calls += 1
                args = [b"".join(writes), b"".join(claims)]
                reply = await guarded(lambda: self._script(args=args), deadline=self._op_timeout,
                                      what="idempotency keys")
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

