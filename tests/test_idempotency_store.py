"""The key stores (memory, and Redis on a real redis-server) keep one contract: a key is
claimed once, however many claim it at the same moment; its outcome replaces the claim; a
released key can be claimed again; keys expire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.errors import StoreUnavailable
from router.idempotency.model import Record, State
from router.idempotency.redis_store import RedisKeys
from router.idempotency.store import KeyStore, MemoryKeys
from router.store.redis_client import RedisClients
from tests.fakes import ManualClock
from tests.redis_server import RedisServer

pytestmark = pytest.mark.system  # the Redis half needs redis-server


@pytest.fixture(params=["memory", "redis"])
async def keys(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield MemoryKeys(ManualClock())
        return
    server = RedisServer(tmp_path).start()
    clients = RedisClients(server.url)
    store = RedisKeys(clients, "t:")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await clients.close()
        server.kill()


async def flushed(keys: KeyStore) -> None:
    """Outcomes are written in the background: wait until they are (Redis)."""
    if isinstance(keys, RedisKeys):
        await keys.flush()


async def test_a_key_is_claimed_once(keys: KeyStore) -> None:
    claim = Record(State.IN_FLIGHT, "fp", 1.0)
    got = await asyncio.gather(*(keys.claim("d1", claim, 60) for _ in range(50)))
    assert sum(1 for g in got if g is None) == 1
    assert all(g == claim for g in got if g is not None)
    done = Record(State.DONE, "fp", 1.0, 201, "application/json", b'{"id":1}\n')
    keys.keep("d1", done, 60)
    await flushed(keys)
    assert await keys.claim("d1", claim, 60) == done
    keys.release("d1")
    await flushed(keys)
    assert await keys.claim("d1", claim, 60) is None


async def test_keys_expire(keys: KeyStore) -> None:
    claim = Record(State.IN_FLIGHT, "fp", 1.0)
    assert await keys.claim("d2", claim, 0.05) is None
    if isinstance(keys, MemoryKeys):
        await keys._clock.advance(0.1)  # type: ignore[attr-defined]
    else:
        await asyncio.sleep(0.1)
    assert await keys.claim("d2", claim, 60) is None


async def test_redis_script_flushed_killed_and_blackholed(tmp_path: Path) -> None:
    """The Redis store writes its calls on its own connections: a flushed script cache is
    loaded again (nothing lost), a dead or silent Redis answers every claim queued with
    StoreUnavailable within the deadline (no claim is left waiting, nothing is sent), and a
    restarted Redis is used again."""
    server = RedisServer(tmp_path).start()
    clients = RedisClients(server.url)
    keys = RedisKeys(clients, "t:", op_timeout=0.5)
    await keys.open()
    claim = Record(State.IN_FLIGHT, "fp", 1.0)
    try:
        assert await keys.claim("a", claim, 60) is None
        raw = clients.client(op_timeout=1.0)
        await raw.script_flush()
        await raw.aclose()
        assert await keys.claim("b", claim, 60) is None  # NOSCRIPT: loaded, sent again
        assert await keys.claim("a", claim, 60) == claim

        server.kill()
        got = await asyncio.gather(*(keys.claim(f"k{i}", claim, 60) for i in range(20)),
                                   return_exceptions=True)
        assert all(isinstance(g, StoreUnavailable) for g in got), got
        server.start()
        assert await keys.claim("c", claim, 60) is None
        assert await keys.claim("a", claim, 60) == claim  # the AOF kept it

        server.pause()  # connections open, no answer: the socket timeout bounds the call
        try:
            got = await asyncio.wait_for(
                asyncio.gather(*(keys.claim(f"p{i}", claim, 60) for i in range(5)),
                               return_exceptions=True), 5)
            assert all(isinstance(g, StoreUnavailable) for g in got), got
        finally:
            server.resume()
        assert await keys.claim("d", claim, 60) is None
    finally:
        await keys.close()
        await clients.close()
        server.kill()
