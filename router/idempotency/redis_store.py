"""Kept responses in Redis, shared by every router and worker: one string per key,
``<prefix>idem:<digest>`` (``Record.encode``), with its TTL. Claims made at the same moment
go in one script call, and outcomes are written in batches: a key costs the data path no
Redis round trip of its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from redis.asyncio import Redis

from router.batcher import Answered, Batcher
from router.errors import StoreUnavailable
from router.idempotency.model import Record
from router.store.packing import FIELDS_LUA, pack
from router.store.redis_client import RedisClients
from router.store.redis_commands import guarded

# ARGV: then per claim one packed (key, value, ttl ms): SET NX GET, answers the old value or ''.
CLAIM: Final = FIELDS_LUA + """
local out = {}
for n = 1, #ARGV do
  local f = fields(ARGV[n])
  out[n] = redis.call('SET', f[1], f[2], 'NX', 'GET', 'PX', f[3]) or ''
end
return out
"""


log = logging.getLogger("wa_router.idempotency")


class RedisKeys:
    def __init__(self, clients: RedisClients, prefix: str, *, op_timeout: float = 2.0) -> None:
        self.p = prefix + "idem:"
        self._clients = clients
        self._op_timeout = op_timeout
        self._client: Redis | None = None
        self._claims: Answered[bytes, bytes] = Answered(self._claim_batch, max_items=512,
                                                        name="idempotency-claims")
        self._writes: Batcher[tuple[str, bytes | None, int]] = Batcher(
            self._write_batch, max_items=512, name="idempotency-writes")

    def __repr__(self) -> str:
        return f"<RedisKeys prefix={self.p!r}>"

    async def open(self) -> None:
        self._client = self._clients.client(op_timeout=self._op_timeout, name="wa-router-idempotency")
        self._claim_script = self._client.register_script(CLAIM)

    async def close(self) -> None:
        await self._claims.batcher.close()
        await self._writes.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _redis(self) -> Redis:
        if self._client is None:
            raise StoreUnavailable("the idempotency store is not open")
        return self._client

    async def _claim_batch(self, claims: list[bytes]) -> list[bytes]:
        self._redis()
        answer: list[bytes] = await guarded(lambda: self._claim_script(args=claims),
                                            deadline=self._op_timeout, what="idempotency keys")
        return answer

    async def _write_batch(self, writes: list[tuple[str, bytes | None, int]]) -> None:
        async def run() -> None:
            async with self._redis().pipeline(transaction=False) as pipe:
                for key, value, ttl in writes:
                    if value is None:
                        pipe.delete(key)
                    else:
                        pipe.set(key, value, px=ttl)
                await pipe.execute()

        await guarded(run, deadline=self._op_timeout, what="idempotency keys")

    async def claim(self, digest: str, record: Record, ttl: float) -> Record | None:
        found = await self._claims(pack(self.p + digest, record.encode(), str(max(1, int(ttl * 1000)))))
        return Record.decode(found) if found else None

    async def flush(self) -> None:
        """Wait until what was kept or released so far is written (tests, shutdown)."""
        await self._writes.submit([])

    def keep(self, digest: str, record: Record, ttl: float) -> None:
        self._writes.put([(self.p + digest, record.encode(), max(1, int(ttl * 1000)))], _written)

    def release(self, digest: str) -> None:
        self._writes.put([(self.p + digest, None, 0)], _written)


def _written(error: BaseException | None) -> None:
    if error is not None and not isinstance(error, asyncio.CancelledError):
        # The claim stays in flight and turns outcome_unknown once old: at worst a retry is
        # told so, never a second send.
        log.warning("idempotency: keeping an outcome failed: %s", error)


