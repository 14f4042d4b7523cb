"""Issue 5's acceptance scenario at the relay level: 10,000 events from 50 sessions, the
target failing 30% of first attempts and fully down for 5 s in the middle."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from redis.asyncio import Redis

from router.webhooks.filters import target_key
from tests.redis_server import RedisServer
from tests.test_webhooks_support import Target, config, event, relay, target_cfg, wait_until

SESSIONS = 50
PER_SESSION = 200


async def test_10k_events_failures_and_outage(redis_server: RedisServer) -> None:
    target = await Target(hmac_key="k").start()
    target.fail_first = 0.3
    cfg = config(target_cfg(target.url, hmac_key="k"), policy="exponential", delay=0.05,
                 max_delay=0.5, jitter=0.2, attempts=1000)
    r = relay(cfg, redis_server.url, breaker_base=0.2, breaker_max=1.0)
    await r.start()
    try:
        async def produce() -> None:
            for seq in range(PER_SESSION):
                await asyncio.gather(*(r.accept([event(f"s{i}", seq)]) for i in range(SESSIONS)))
                await asyncio.sleep(0.01)  # spread the load over ~2-4 s

        producer = asyncio.create_task(produce())
        await wait_until(lambda: len(target.delivered_ids()) >= 3000, 20, "3000 delivered")
        await target.down()
        down_at = time.monotonic()
        attempts_before = next(iter(r.targets().values())).attempts
        await asyncio.sleep(5.0)
        attempts_down = next(iter(r.targets().values())).attempts - attempts_before
        await target.up()
        await producer
        total = SESSIONS * PER_SESSION
        await wait_until(lambda: len(target.delivered_ids()) == total, 30, "every event delivered")
        took = time.monotonic() - down_at

        # per-session order of first deliveries
        seen: set[str] = set()
        order: dict[str, list[int]] = {}
        for h in target.delivered():
            if h.id not in seen:
                seen.add(h.id)
                order.setdefault(str(h.session), []).append(h.seq)
        assert all(order[f"s{i}"] == list(range(PER_SESSION)) for i in range(SESSIONS))
        assert all(h.hmac_ok for h in target.hits)

        # duplicates: answered 2xx more than once (a connection cut mid-answer); ids make
        # them harmless, the report counts them
        twice = sum(1 for n in Counter(h.id for h in target.delivered()).values() if n > 1)
        print(f"\n10k: {r.received} received, {r.delivered} delivered, {r.retried} retried, "
              f"{twice} duplicates at the target, {attempts_down} attempts during the 5 s "
              f"outage, all delivered {took:.1f}s after the outage began")
        assert r.received == total and r.dead_count == 0
        assert attempts_down < 100  # the breaker: no spinning on a dead target
        await wait_until(lambda: r.backlog() == 0, 5, "backlog drained")
        db = Redis.from_url(redis_server.url)
        try:
            await asyncio.sleep(1.2)  # the next trim
            assert await db.xlen(f"t:wh:{target_key(target.url)}") == 0
        finally:
            await db.aclose()
    finally:
        await r.stop()
        await target.stop()
