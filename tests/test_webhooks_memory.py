"""Webhook relay in memory mode (no store.url): same semantics, not durable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from router.errors import ShuttingDown
from tests.test_webhooks_support import Target, config, event, relay, target_cfg, wait_until


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = await Target(hmac_key="k").start()
    yield t
    await t.stop()


async def test_memory_mode_delivers_in_order_with_retries(target: Target) -> None:
    target.fail_first = 0.3
    r = relay(config(target_cfg(target.url, hmac_key="k"), delay=0.01), None)
    assert not r.durable
    await r.start()
    try:
        for seq in range(20):
            await r.accept([event(f"s{i}", seq) for i in range(10)])
        await wait_until(lambda: len(target.delivered_ids()) == 200)
        firsts: dict[str, list[int]] = {}
        seen: set[str] = set()
        for h in target.delivered():
            if h.id not in seen:
                seen.add(h.id)
                firsts.setdefault(str(h.session), []).append(h.seq)
        assert all(firsts[f"s{i}"] == list(range(20)) for i in range(10))
        assert all(h.hmac_ok for h in target.hits)
        assert r.retried > 20 and r.received == 200
        await wait_until(lambda: r.backlog() == 0)
    finally:
        await r.stop()


async def test_memory_mode_dead_list_and_replay(target: Target) -> None:
    fixed = {"on": False}
    target.rule = lambda h: None if fixed["on"] else (404 if h.session == "nf" else 500 if h.session == "err" else None)
    r = relay(config(target_cfg(target.url), attempts=2, delay=0.01), None)
    await r.start()
    try:
        await r.accept([event("nf", 0), event("err", 0), event("ok", 0)])
        await wait_until(lambda: r.dead_count == 2)
        dead = {d["event_id"]: d for d in await r.dead()}
        assert dead["evt-nf-0"]["attempts"] == 1 and dead["evt-nf-0"]["last_status"] == 404
        assert dead["evt-err-0"]["attempts"] == 2 and dead["evt-err-0"]["last_status"] == 500
        assert r.backlog() == 0
        fixed["on"] = True
        assert await r.replay([dead["evt-nf-0"]["id"]]) == 1
        await wait_until(lambda: "evt-nf-0" in target.delivered_ids())
        assert await r.replay() == 1
        await wait_until(lambda: "evt-err-0" in target.delivered_ids())
        assert await r.dead() == []
    finally:
        await r.stop()


async def test_memory_mode_backlog_while_down_and_stop(target: Target) -> None:
    r = relay(config(target_cfg(target.url)), None)
    await r.start()
    await target.down()
    await r.accept([event(f"s{i}", 0) for i in range(30)])
    assert r.backlog() == 30
    await r.stop()
    with pytest.raises(ShuttingDown):
        await r.accept([event("late", 0)])


async def test_dead_warnings_are_rate_limited(target: Target) -> None:
    target.status = 404
    r = relay(config(target_cfg(target.url)), None, dead_event_interval=60.0)
    await r.start()
    await r.accept([event(f"s{i}", 0) for i in range(20)])
    await wait_until(lambda: r.dead_count == 20)
    await r.stop()  # reports what was held back
    warnings = r._events.recent(kind="webhook_dead")
    assert 1 <= len(warnings) <= 3  # not 20
    assert sum(1 + w.data["more"] for w in warnings) == 20
    assert all(w.severity == "warning" and w.data["last_status"] == 404 for w in warnings)
