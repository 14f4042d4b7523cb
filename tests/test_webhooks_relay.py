"""Webhook relay against a real redis-server and a real aiohttp target on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from router.batcher import settle
from router.errors import StoreUnavailable
from router.webhooks import WebhookRelay
from router.webhooks.filters import target_key
from router.webhooks.model import InboundEvent
from router.webhooks.queue_redis import GROUP, RedisQueue
from tests.redis_replies import stream_entries
from tests.redis_server import RedisServer
from tests.test_webhooks_support import (
    Hit,
    Target,
    config,
    event,
    eventually,
    relay,
    target_cfg,
    wait_until,
)

RelayFactory = Callable[..., WebhookRelay]


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = await Target(hmac_key="target-key").start()
    yield t
    await t.stop()


@pytest.fixture
async def relays() -> AsyncIterator[list[WebhookRelay]]:
    made: list[WebhookRelay] = []
    yield made
    for r in made:
        t0 = time.monotonic()
        await r.stop()
        assert time.monotonic() - t0 < 8, "stop() is bounded"


@pytest.fixture
async def rdb(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def started(relays: list[WebhookRelay], r: WebhookRelay) -> WebhookRelay:
    relays.append(r)
    await r.start()
    return r


def per_session_first_deliveries(hits: list[Hit]) -> dict[str, list[int]]:
    """Each session's seqs in the order of their first 2xx delivery."""
    seen: set[str] = set()
    out: dict[str, list[int]] = defaultdict(list)
    for h in hits:
        if 200 <= h.status < 300 and h.id not in seen:
            seen.add(h.id)
            out[str(h.session)].append(h.seq)
    return out


async def test_delivery_headers_and_hmac(redis_server: RedisServer, target: Target,
                                         relays: list[WebhookRelay]) -> None:
    cfg = config(target_cfg(target.url, hmac_key="target-key"))
    r = await started(relays, relay(cfg, redis_server.url))
    assert r.durable
    evs = [event("s1", 0), event("s1", 1), event(None, 2, "presence.update")]
    await r.accept(evs)
    await wait_until(lambda: len(target.delivered()) == 3, what="3 deliveries")
    by_id = {h.id: h for h in target.hits}
    for ev in evs:
        h = by_id[ev.id]
        assert h.body == ev.body  # byte for byte
        assert h.headers["Content-Type"] == "application/json"
        assert h.headers["X-Webhook-Request-Id"] == ev.id
        assert h.headers["X-Webhook-Attempt"] == "1"
        assert h.headers["X-Webhook-Hmac-Algorithm"] == "sha512"
        assert h.hmac_ok is True
        assert abs(int(h.headers["X-Webhook-Timestamp"]) / 1000 - time.time()) < 60
    assert [h.seq for h in target.hits if h.session == "s1"] == [0, 1]
    assert (r.received, r.delivered, r.retried, r.dead_count) == (3, 3, 0, 0)


async def test_no_hmac_header_without_key(redis_server: RedisServer, relays: list[WebhookRelay]) -> None:
    t = await Target().start()
    try:
        r = await started(relays, relay(config(target_cfg(t.url)), redis_server.url))
        await r.accept([event("s", 0)])
        await wait_until(lambda: len(t.delivered()) == 1)
        assert "X-Webhook-Hmac" not in t.hits[0].headers
    finally:
        await t.stop()


async def test_event_filters_pick_targets(redis_server: RedisServer, target: Target,
                                          relays: list[WebhookRelay]) -> None:
    other = await Target().start()
    try:
        cfg = config(target_cfg(target.url, ("message.*",), hmac_key="target-key"),
                     target_cfg(other.url, ("session.status",)))
        r = await started(relays, relay(cfg, redis_server.url))
        await r.accept([event("s", 0, "message"), event("s", 1, "session.status"),
                        event("s", 2, "message.ack"), event("s", 3, "call.received")])
        await wait_until(lambda: len(target.delivered()) == 2 and len(other.delivered()) == 1)
        await asyncio.sleep(0.2)
        assert [h.seq for h in target.hits] == [0, 2]
        assert [h.seq for h in other.hits] == [1]
        assert r.received == 4
    finally:
        await other.stop()


async def test_per_session_order_with_retries_and_a_stuck_session(
    redis_server: RedisServer, target: Target, relays: list[WebhookRelay]
) -> None:
    target.fail_first = 0.3
    stuck = {"on": True}
    target.rule = lambda h: 503 if h.session == "stuck" and stuck["on"] else None
    cfg = config(target_cfg(target.url), delay=0.02, attempts=1000)
    r = await started(relays, relay(cfg, redis_server.url))
    sessions = [f"s{i}" for i in range(20)]
    for seq in range(30):
        await r.accept([event("stuck", seq)])
        await asyncio.gather(*(r.accept([event(s, seq)]) for s in sessions))
    await wait_until(lambda: len(target.delivered_ids()) == 20 * 30, 20, "the other sessions")
    # The stuck session's head was retried meanwhile; nothing behind it was sent.
    assert {h.seq for h in target.hits if h.session == "stuck"} == {0}
    assert sum(1 for h in target.hits if h.session == "stuck") > 3
    stuck["on"] = False
    await wait_until(lambda: len(target.delivered_ids()) == 21 * 30, 20, "the stuck session")
    order = per_session_first_deliveries(target.hits)
    assert all(order[s] == list(range(30)) for s in [*sessions, "stuck"])
    assert r.retried >= 0.2 * 600  # the 30% first-attempt failures were retried
    assert r.dead_count == 0


async def test_ordering_none_does_not_hold_a_session(redis_server: RedisServer, target: Target,
                                                     relays: list[WebhookRelay]) -> None:
    target.rule = lambda h: 500 if h.seq == 0 else None
    cfg = config(target_cfg(target.url), ordering="none", attempts=3)
    r = await started(relays, relay(cfg, redis_server.url))
    await r.accept([event("s", i) for i in range(5)])
    await wait_until(lambda: len(target.delivered()) == 4)
    await wait_until(lambda: r.dead_count == 1)
    assert sorted(h.seq for h in target.delivered()) == [1, 2, 3, 4]


async def test_404_goes_dead_and_replay_delivers(redis_server: RedisServer, target: Target,
                                                 relays: list[WebhookRelay]) -> None:
    broken = {"on": True}
    target.rule = lambda h: 404 if h.session == "bad" and broken["on"] else None
    cfg = config(target_cfg(target.url, hmac_key="target-key"))
    r = await started(relays, relay(cfg, redis_server.url))
    await r.accept([event("bad", 0), event("good", 0), event("bad", 1)])
    await wait_until(lambda: r.dead_count == 2, what="2 dead")
    assert [h.attempt for h in target.hits if h.session == "bad"] == [1, 1]  # no retry
    dead = await r.dead()
    assert [d["event_id"] for d in dead] == ["evt-bad-1", "evt-bad-0"]  # newest first
    d = dead[-1]
    assert d["target"] == target.url and d["last_status"] == 404 and d["attempts"] == 1
    assert d["event"] == "message" and d["session"] == "bad"
    assert json.loads(d["body"])["seq"] == 0 and d["last_error"] == "HTTP 404"
    warnings = r._events.recent(kind="webhook_dead")
    assert warnings and warnings[0].severity == "warning"
    # replay one by id, then the rest
    broken["on"] = False
    assert await r.replay([d["id"], "0-1"]) == 1
    await wait_until(lambda: "evt-bad-0" in target.delivered_ids())
    assert [x["event_id"] for x in await r.dead()] == ["evt-bad-1"]
    assert await r.replay() == 1
    await wait_until(lambda: "evt-bad-1" in target.delivered_ids())
    assert await r.dead() == [] and await r.replay() == 0
    await wait_until(lambda: r.backlog() == 0)


async def test_attempts_exhausted_goes_dead(redis_server: RedisServer, target: Target,
                                            relays: list[WebhookRelay]) -> None:
    target.rule = lambda h: 500 if h.session == "x" else None
    cfg = config(target_cfg(target.url), policy="exponential", delay=0.02, attempts=3, jitter=0.2)
    r = await started(relays, relay(cfg, redis_server.url))
    await r.accept([event("x", 0), event("y", 0)])
    await wait_until(lambda: r.dead_count == 1)
    assert [h.attempt for h in target.hits if h.session == "x"] == [1, 2, 3]
    [d] = await r.dead()
    assert (d["attempts"], d["last_status"], d["event_id"]) == (3, 500, "evt-x-0")
    assert r.retried == 2 and r.delivered == 1


async def test_target_down_then_up_no_spin(redis_server: RedisServer, target: Target,
                                           relays: list[WebhookRelay]) -> None:
    cfg = config(target_cfg(target.url), delay=0.02, attempts=1000)
    r = await started(relays, relay(cfg, redis_server.url, breaker_base=0.2, breaker_max=0.5))
    await target.down()
    for seq in range(10):
        await r.accept([event(f"s{i}", seq) for i in range(20)])
    await wait_until(lambda: r.backlog() == 200, what="backlog of 200")
    worker = next(iter(r.targets().values()))
    await asyncio.sleep(0.5)
    before = worker.attempts
    await asyncio.sleep(2.0)
    during = worker.attempts - before
    # Without the breaker: 20 session heads retried every 20 ms = ~2000 attempts in 2 s.
    assert during <= 8, during
    assert worker.status()["breaker"] in ("open", "half_open")  # probing now and then, never closed
    assert r.status()[0]["backlog"] == 200
    [down] = r._events.recent(kind="webhook_target_down")  # once, not per probe
    assert down.severity == "warning" and "connect error" in down.message
    await target.up()
    await wait_until(lambda: len(target.delivered_ids()) == 200, 10, "everything delivered")
    assert len(r._events.recent(kind="webhook_target_up")) == 1
    order = per_session_first_deliveries(target.hits)
    assert all(order[f"s{i}"] == list(range(10)) for i in range(20))
    await wait_until(lambda: r.backlog() == 0, what="backlog drained")


@pytest.mark.parametrize("ordering", ["per_session", "none"])
async def test_crashed_relay_entries_delivered_by_another(
    redis_server: RedisServer, target: Target, relays: list[WebhookRelay], rdb: Redis, ordering: str
) -> None:
    cfg = config(target_cfg(target.url), delay=0.02, attempts=1000, ordering=ordering)
    a = await started(relays, relay(cfg, redis_server.url, consumer="a"))
    await target.down()
    await a.accept([event(f"s{i % 5}", i // 5) for i in range(50)])
    stream = f"t:wh:{target_key(target.url)}"
    await wait_until(lambda: a.status()[0]["held"] == 50, what="a holds everything")
    pending = await rdb.xpending(stream, GROUP)
    assert pending["pending"] == 50 and {c["name"] for c in pending["consumers"]} == {b"a"}
    a.abort()  # a crash: nothing handed back, lease not released
    await target.up()
    t0 = time.monotonic()
    b = await started(relays, relay(cfg, redis_server.url, consumer="b"))
    await wait_until(lambda: len(target.delivered_ids()) == 50, 10, "b delivers a's entries")
    assert time.monotonic() - t0 >= 0.5  # it had to wait for a's entries to go idle
    if ordering == "per_session":
        order = per_session_first_deliveries(target.hits)
        assert all(order[f"s{i}"] == list(range(10)) for i in range(5))
    await wait_until(lambda: b.backlog() == 0)
    assert (await rdb.xpending(stream, GROUP))["pending"] == 0


@pytest.mark.parametrize("ordering", ["per_session", "none"])
async def test_two_relays_share_the_work(redis_server: RedisServer, target: Target,
                                         relays: list[WebhookRelay], ordering: str) -> None:
    """Both accept; with per_session one delivers (lease) and order holds; with none both
    deliver."""
    target.fail_first = 0.2
    target.delay = 0.002
    cfg = config(target_cfg(target.url), delay=0.02, attempts=1000, ordering=ordering)
    a = await started(relays, relay(cfg, redis_server.url, consumer="a"))
    b = await started(relays, relay(cfg, redis_server.url, consumer="b"))
    for seq in range(20):
        await asyncio.gather(*((a if i % 2 else b).accept([event(f"s{i}", seq)]) for i in range(10)))
    await wait_until(lambda: len(target.delivered_ids()) == 200, 15)
    if ordering == "per_session":
        assert 0 in (a.delivered, b.delivered)
        order = per_session_first_deliveries(target.hits)
        assert all(order[f"s{i}"] == list(range(20)) for i in range(10))
    else:
        assert a.delivered > 0 and b.delivered > 0
    assert a.received + b.received == 200


async def test_graceful_stop_hands_back_at_once(redis_server: RedisServer, target: Target,
                                                relays: list[WebhookRelay]) -> None:
    cfg = config(target_cfg(target.url), delay=0.02, attempts=1000)
    a = await started(relays, relay(cfg, redis_server.url, consumer="a", claim_idle=30.0))
    await target.down()
    await a.accept([event(f"s{i % 5}", i // 5) for i in range(50)])
    await wait_until(lambda: a.status()[0]["held"] == 50)
    t0 = time.monotonic()
    await a.stop()
    assert time.monotonic() - t0 < 3
    with pytest.raises(Exception, match="stopping"):
        await a.accept([event("late", 0)])
    await target.up()
    # claim_idle 30 s: b gets them now only because a released lease and entries.
    await started(relays, relay(cfg, redis_server.url, consumer="b", claim_idle=30.0))
    await wait_until(lambda: len(target.delivered_ids()) == 50, 5, "b delivers at once")
    order = per_session_first_deliveries(target.hits)
    assert all(order[f"s{i}"] == list(range(10)) for i in range(5))


async def add(q: RedisQueue, items: list[tuple[str, InboundEvent]]) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    q.add(items, lambda e: settle(fut, e))
    await fut


async def test_trim_never_removes_undelivered(redis_server: RedisServer, rdb: Redis) -> None:
    q = RedisQueue(redis_server.url, "t:", "c1")
    await q.open()
    stream = q.stream("k")

    async def ids() -> list[str]:
        return [entry_id for entry_id, _ in stream_entries(await rdb.xrange(stream))]

    try:
        assert await q.trim("k") == 0  # no stream, no group: nothing to do
        await q.prepare("k")
        await add(q, [("k", event("s", i)) for i in range(10)])
        all_ids = await ids()
        first = await q.read("k", 4, 0.1)  # 4 pending, 6 unread
        # acknowledged without XDEL (what trim is the safety net for): 0 and 2
        await rdb.xack(stream, GROUP, first[0].qid, first[2].qid)
        assert await q.trim("k") == 1  # only 0: 2 is newer than the oldest pending (1)
        assert await ids() == all_ids[1:]
        await rdb.xack(stream, GROUP, first[1].qid, first[3].qid)
        assert await q.trim("k") == 3  # 1, 2, 3: everything read is acked, 6 unread stay
        assert await ids() == all_ids[4:]
        rest = await q.read("k", 100, 0.1)
        assert [e.event_id for e in rest] == [f"evt-s-{i}" for i in range(4, 10)]
        assert await q.trim("k") == 0  # all pending
        await q.finish("k", [e.qid for e in rest[:3]], [])  # finish deletes at once
        assert await ids() == all_ids[7:]
        await q.finish("k", [e.qid for e in rest[3:]], [])
        assert await ids() == [] and await q.trim("k") == 0
        await add(q, [("k", event("s", 99))])
        assert await q.trim("k") == 0 and len(await ids()) == 1  # unread
    finally:
        await q.close()


async def test_relay_trims_delivered_keeps_retrying(redis_server: RedisServer, target: Target,
                                                    relays: list[WebhookRelay], rdb: Redis) -> None:
    target.rule = lambda h: 503 if h.session == "hold" else None
    cfg = config(target_cfg(target.url), delay=0.05, attempts=10_000)
    r = await started(relays, relay(cfg, redis_server.url))
    await r.accept([event("hold", i) for i in range(3)])
    await r.accept([event(f"ok{i % 4}", i) for i in range(40)])
    await wait_until(lambda: len(target.delivered_ids()) == 40)
    stream = f"t:wh:{target_key(target.url)}"

    async def stream_sessions() -> list[str]:
        return [json.loads(f[b"b"])["session"] for _, f in stream_entries(await rdb.xrange(stream))]

    await eventually(lambda: stream_sessions(), ["hold"] * 3)
    await wait_until(lambda: r.backlog() == 3, what="backlog refreshed")


async def test_accept_batches_concurrent_calls(redis_server: RedisServer, target: Target,
                                               relays: list[WebhookRelay], rdb: Redis) -> None:
    r = await started(relays, relay(config(target_cfg(target.url)), redis_server.url))

    async def stats() -> dict[str, int]:
        info: dict[str, Any] = await rdb.info("commandstats")
        return {k: v["calls"] for k, v in info.items()}

    before = await stats()
    await asyncio.gather(*(r.accept([event(f"s{i % 50}", i)]) for i in range(2000)))
    after = await stats()
    xadds = after.get("cmdstat_xadd", 0) - before.get("cmdstat_xadd", 0)
    scripts = after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0)
    assert xadds == 2000
    assert scripts < 40, scripts  # 2000 accepts in a few round trips (+ lease/trim calls)
    assert r.received == 2000
    await wait_until(lambda: len(target.delivered_ids()) == 2000, 20)


async def test_redis_down_accept_fails_fast_and_workers_resume(
    redis_server: RedisServer, target: Target, relays: list[WebhookRelay]
) -> None:
    r = await started(relays, relay(config(target_cfg(target.url)), redis_server.url))
    await r.accept([event("s", 0)])
    await wait_until(lambda: len(target.delivered()) == 1)
    redis_server.kill()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await r.accept([event("s", 1)])
    assert time.monotonic() - t0 < 3
    await asyncio.sleep(0.5)  # the workers meet the outage too
    redis_server.start()
    await wait_until(lambda: True)
    for i in range(2, 6):
        await r.accept([event("s", i)])
    await wait_until(lambda: len(target.delivered_ids()) == 5, 10, "delivery resumes")
    assert [h.seq for h in target.delivered()] == [0, 2, 3, 4, 5]


async def test_blackholed_redis_bounded_accept_and_stop(redis_server: RedisServer, target: Target) -> None:
    r = relay(config(target_cfg(target.url)), redis_server.url, op_timeout=0.3, connect_timeout=0.3)
    await r.start()
    await r.accept([event("s", 0)])
    await wait_until(lambda: len(target.delivered()) == 1)
    redis_server.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await r.accept([event("s", 1)])
        assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        await r.stop()
        assert time.monotonic() - t0 < 8.0
    finally:
        redis_server.resume()


async def test_relay_starts_while_redis_is_down(redis_server: RedisServer, target: Target,
                                                relays: list[WebhookRelay]) -> None:
    redis_server.kill()
    r = await started(relays, relay(config(target_cfg(target.url)), redis_server.url))
    with pytest.raises(StoreUnavailable):
        await r.accept([event("s", 0)])
    redis_server.start()
    await r.accept([event("s", 1)])
    await wait_until(lambda: len(target.delivered()) == 1, 10)


async def test_update_adds_and_removes_targets(redis_server: RedisServer, target: Target,
                                               relays: list[WebhookRelay]) -> None:
    other = await Target(hmac_key="k2").start()
    try:
        r = await started(relays, relay(config(target_cfg(target.url)), redis_server.url))
        await r.update(config(target_cfg(target.url, hmac_key="target-key"),
                              target_cfg(other.url, hmac_key="k2")))
        await r.accept([event("s", 0)])
        await wait_until(lambda: len(target.delivered()) == 1 and len(other.delivered()) == 1)
        assert target.hits[0].hmac_ok and other.hits[0].hmac_ok
        await r.update(config(target_cfg(other.url, hmac_key="k2")))
        await r.accept([event("s", 1)])
        await wait_until(lambda: len(other.delivered()) == 2)
        await asyncio.sleep(0.2)
        assert len(target.hits) == 1
        assert len(r.status()) == 1
    finally:
        await other.stop()


async def test_a_hanging_target_times_out_and_nothing_is_lost(
    redis_server: RedisServer, target: Target, relays: list[WebhookRelay]
) -> None:
    """A target that accepts and never answers: each attempt ends at request_timeout and is
    retried; accepting is not held up; nothing is lost once it answers again."""
    cfg = config(target_cfg(target.url), delay=0.05, attempts=1000)
    r = await started(relays, relay(cfg, redis_server.url, request_timeout=0.3))
    hold = target.hold = asyncio.Event()
    await r.accept([event(f"h{i}", 0) for i in range(5)])
    worker = next(iter(r.targets().values()))
    await wait_until(lambda: worker.attempts >= 10, 15, "timed-out attempts to be retried")
    t0 = time.monotonic()
    await r.accept([event(f"h{i}", 1) for i in range(5)])
    assert time.monotonic() - t0 < 1.0  # accepting never waits for delivery
    target.hold = None
    hold.set()
    await wait_until(lambda: len(target.delivered_ids()) == 10, 20, "everything delivered")
    order = per_session_first_deliveries(target.hits)
    assert all(order[f"h{i}"] == [0, 1] for i in range(5))
