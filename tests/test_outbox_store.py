"""The outbox stores (memory, and Redis on a real redis-server) keep one contract: queue
order, turns with one holder at a time, state changes with their counts, campaigns,
idempotency keys, pacing."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.outbox.model import (
    Campaign,
    CampaignState,
    Message,
    Priority,
    Request,
    State,
    message_id,
)
from router.outbox.redis_store import RedisOutbox
from router.outbox.store import IdempotencyKey, KeyReused, MemoryOutbox, OutboxStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.system  # the Redis half needs redis-server

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxStore]:
    if request.param == "memory":
        yield MemoryOutbox()
        return
    server = RedisServer(tmp_path).start()
    s = RedisOutbox(server.url, "t:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        server.kill()


def msg(session: str, seq: int, *, priority: Priority = Priority.NORMAL, campaign: str | None = None,
        body: bytes = b'{"text":"x"}') -> Message:
    return Message(message_id(session), session,
                   Request("POST", "/api/sendText", "a=1", body, "application/json", "rid-1"),
                   created=NOW + seq, seq=seq, priority=priority, campaign=campaign)


async def sent(store: OutboxStore, m: Message) -> None:
    """queued -> sending -> sent, as the dispatcher does."""
    m.state = State.SENDING
    await store.save(m, State.QUEUED)
    m.state, m.finished = State.SENT, NOW + 10
    await store.save(m, State.SENDING)


async def test_messages_round_trip_byte_for_byte(store: OutboxStore) -> None:
    m = msg("s1", 1, body=b'{"text":"h\\u00e9llo \xf0\x9f\x91\x8b"}')
    m.ref = "order-42"
    await store.add([m])
    got = await store.get(m.id)
    assert got is not None and got.request == m.request and got.ref == "order-42"
    assert (got.state, got.session, got.created, got.seq) == (State.QUEUED, "s1", m.created, 1)
    assert await store.get("msg_nope") is None


async def test_queue_order_is_priority_then_enqueue_order(store: OutboxStore) -> None:
    a, b = msg("s", 1), msg("s", 2)
    c = msg("s", 3, priority=Priority.HIGH)
    await store.add([a, b, c])
    order = []
    for _ in range(3):
        head = await store.head("s")
        assert head is not None
        order.append(head.id)
        await sent(store, head)
    assert order == [c.id, a.id, b.id]
    assert await store.head("s") is None
    assert await store.depth("s") == {"high": 0, "normal": 0}


async def test_turns_and_schedule(store: OutboxStore) -> None:
    await store.add([msg("a", 1), msg("b", 2)])
    assert sorted(await store.due(NOW, 10)) == ["a", "b"]
    assert await store.due(NOW, 10) == []  # both are being served
    await store.schedule("a", NOW + 5)
    await store.schedule("b", NOW + 1)
    assert await store.due(NOW + 2, 10) == ["b"]
    assert await store.due(NOW + 6, 10) == ["a"]
    # a turn over an empty queue ends the session's turns until the next add
    for s in ("a", "b"):
        head = await store.head(s)
        assert head is not None
        await sent(store, head)
        await store.schedule(s, None)
    assert await store.due(NOW + 100, 10) == []
    await store.add([msg("a", 3)])
    assert await store.due(NOW + 100, 10) == ["a"]


async def test_state_changes_keep_totals_and_campaign_counts(store: OutboxStore) -> None:
    c = Campaign("cmp_1", "dec", created=NOW)
    await store.add_campaign(c)
    ms = [msg("s", i, campaign="cmp_1") for i in range(4)]
    await store.add(ms)
    await sent(store, ms[0])
    cancel = ms[1]
    cancel.state, cancel.finished = State.CANCELLED, NOW + 1
    await store.save(cancel, State.QUEUED)
    got = await store.get_campaign("cmp_1")
    assert got is not None and got.total == 4
    assert {k: v for k, v in got.counts.items() if v} == {"queued": 2, "sent": 1, "cancelled": 1}
    totals = await store.totals()
    assert (totals["queued"], totals["sent"], totals["cancelled"]) == (2, 1, 1)
    assert sorted(x.id for x in await store.queued("cmp_1")) == sorted([ms[2].id, ms[3].id])
    got.state, got.finished = CampaignState.CANCELLED, NOW + 2
    await store.save_campaign(got)
    again = await store.get_campaign("cmp_1")
    assert again is not None and again.state is CampaignState.CANCELLED and again.total == 4
    assert [x.id for x in await store.campaigns(10)] == ["cmp_1"]
    snap = await store.snapshot()
    assert snap.backlog == 2 and snap.oldest is not None


async def test_an_explicit_retry_puts_a_failed_message_back_in_its_queue(store: OutboxStore) -> None:
    m = msg("s", 1)
    await store.add([m])
    await store.due(NOW, 10)
    m.state, m.finished = State.FAILED, NOW
    await store.save(m, State.QUEUED)
    await store.schedule("s", None)
    assert await store.head("s") is None
    m.state, m.finished = State.QUEUED, None
    await store.save(m, State.FAILED)
    await store.schedule("s", NOW)
    head = await store.head("s")
    assert head is not None and head.id == m.id
    assert await store.due(NOW, 10) == ["s"]


async def test_idempotency_keys(store: OutboxStore) -> None:
    key = IdempotencyKey("client\ns", "k1", "fp1")
    first = await store.add([msg("s", 1)], key, 60)
    again = await store.add([msg("s", 2)], key, 60)
    assert [m.id for m in again] == [first[0].id]
    with pytest.raises(KeyReused):
        await store.add([msg("s", 3)], dataclasses.replace(key, fingerprint="fp2"), 60)
    other_scope = await store.add([msg("s", 4)], dataclasses.replace(key, scope="other\ns"), 60)
    assert other_scope[0].id != first[0].id
    assert (await store.totals())["queued"] == 2


async def test_pacing_paused_and_deepest(store: OutboxStore) -> None:
    await store.record_send("s", NOW, NOW + 3)
    await store.record_send("s", NOW + 4, NOW + 8)
    p = await store.pacing("s")
    assert p.not_before == NOW + 8 and p.sent == [NOW, NOW + 4]
    await store.set_paused("s", True)
    assert await store.paused("s") and not await store.paused("t")
    assert (await store.snapshot()).sessions_paused == 1
    await store.set_paused("s", False)
    assert not await store.paused("s")
    await store.add([msg("deep", i) for i in range(3)] + [msg("shallow", 9)])
    assert (await store.deepest(5))[:2] == [("deep", 3), ("shallow", 1)]


async def test_a_renewed_turn_is_not_taken_and_sweep_forgets_old_messages(store: OutboxStore) -> None:
    m = msg("s", 1)
    await store.add([m])
    assert await store.due(NOW, 10) == ["s"]
    await store.renew("s", NOW + 5)
    assert await store.due(NOW + 6, 10) == []  # still ours (Redis: pushed back with the lease)
    await sent(store, m)
    await store.schedule("s", None)
    assert await store.sweep(NOW + 5, 100) == 0  # it ended at NOW + 10
    assert await store.sweep(NOW + 11, 100) == 1
    assert await store.get(m.id) is None
