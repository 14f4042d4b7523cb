"""The outbox stores (memory, and Redis on a real redis-server) keep one contract: queue
order, turns with one holder at a time, state changes with their counts, campaigns,
idempotency keys, pacing."""

from __future__ import annotations

import asyncio
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
    seq_at,
)
from router.outbox.redis_store import RedisOutbox
from router.outbox.store import (
    Began,
    IdempotencyKey,
    KeyReused,
    MemoryOutbox,
    OutboxStore,
    Sighting,
    TurnEnd,
    TurnStart,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.system  # the Redis half needs redis-server

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxStore]:
    if request.param == "memory":
        yield MemoryOutbox()
        return
    server = RedisServer(tmp_path).start()
    s = RedisOutbox(server.url, "t:", wall=lambda: NOW)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        server.kill()


def msg(session: str, n: int, *, priority: Priority = Priority.NORMAL, campaign: str | None = None,
        body: bytes = b'{"text":"x"}', not_before: float = 0.0) -> Message:
    """The ``n``-th message queued (a microsecond apart)."""
    seq = seq_at(NOW) + n
    return Message(message_id(session), session,
                   Request("POST", "/api/sendText", "a=1", body, "application/json", "rid-1"),
                   created=NOW + n / 1e6, seq=seq, priority=priority, campaign=campaign,
                   not_before=not_before)


async def turn(store: OutboxStore, session: str, now: float = NOW) -> TurnStart:
    starts = [t for t in await store.turns(now, 100, DAY) if t.session == session]
    assert len(starts) == 1, f"no turn for {session}"
    return starts[0]


async def send(store: OutboxStore, start: TurnStart, *, at: float | None = None) -> Message:
    """One turn that sends its head, as the dispatcher does."""
    m = start.head
    at = NOW + 10 if at is None else at
    m.state, m.instance = State.SENDING, "node-1"
    assert await store.begin_send(m) is Began.OK
    m.state, m.finished, m.sent_at = State.SENT, at, at
    ended = await store.end_turn(TurnEnd(m.session, at, m.id, m, State.SENDING, sent_at=at,
                                         not_before=at + 2, horizon=DAY))
    assert ended.written
    return m


async def test_messages_round_trip_byte_for_byte(store: OutboxStore) -> None:
    m = msg("s1", 1, body=b'{"text":"h\\u00e9llo \xf0\x9f\x91\x8b\\n"}', campaign="cmp_x",
            priority=Priority.HIGH, not_before=NOW + 5)
    m.ref, m.expires = "order-42 \u00e9", NOW + 3600
    m.request = dataclasses.replace(m.request, method="PUT", content_type="text/plain")
    await store.add([m])
    got = await store.get(m.id)
    assert got is not None and got.request == m.request
    assert (got.ref, got.campaign, got.priority) == ("order-42 \u00e9", "cmp_x", Priority.HIGH)
    assert (got.not_before, got.expires) == pytest.approx((NOW + 5, NOW + 3600), abs=1e-3)
    assert (got.state, got.session, got.seq, got.order) == (State.QUEUED, "s1", m.seq, m.order)
    assert got.created == pytest.approx(m.created, abs=1e-6)
    assert await store.get("msg_nope") is None
    assert await store.get(message_id("s1")) is None


async def test_queue_order_is_priority_then_due_time(store: OutboxStore) -> None:
    a = msg("s", 1)
    later = msg("s", 2, not_before=NOW + 100)  # scheduled: holds nobody back
    b = msg("s", 3)
    c = msg("s", 4, priority=Priority.HIGH)
    await store.add([a, later, b, c])
    order = [(await send(store, await turn(store, "s", NOW + 10 * k), at=NOW + 10 * k)).id
             for k in range(3)]
    assert order == [c.id, a.id, b.id]
    start = await turn(store, "s", NOW + 100)
    assert start.head.id == later.id
    assert await store.depth("s") == {"high": 0, "normal": 1}


async def test_messages_due_at_the_same_time_keep_their_order(store: OutboxStore) -> None:
    ms = [msg("s", i, not_before=NOW + 5) for i in range(50)]
    await store.add(ms)
    order = [(await send(store, await turn(store, "s", NOW + 10 * i + 5))).id for i in range(50)]
    assert order == [m.id for m in ms]


async def test_turns_are_leased_and_scheduled(store: OutboxStore) -> None:
    a, b = msg("a", 1), msg("b", 2)
    await store.add([a, b])
    assert sorted(t.session for t in await store.turns(NOW, 10, 0)) == ["a", "b"]
    assert await store.turns(NOW, 10, 0) == []  # both are being served
    await store.end_turn(TurnEnd("a", NOW + 5, a.id))
    await store.end_turn(TurnEnd("b", NOW + 1, b.id))
    got_b = await store.turns(NOW + 2, 10, 0)
    got_a = await store.turns(NOW + 6, 10, 0)
    assert [t.session for t in got_b + got_a] == ["b", "a"]
    # the last message sent: no more turns until the next add
    await send(store, got_b[0])
    await send(store, got_a[0])
    assert await store.turns(NOW + 100, 10, 0) == []
    await store.add([msg("a", 3)])
    assert [t.session for t in await store.turns(NOW + 100, 10, 0)] == ["a"]


async def test_a_new_head_during_a_turn_is_looked_at_at_once(store: OutboxStore) -> None:
    a = msg("s", 1, not_before=NOW + 1000)
    await store.add([a])
    assert await store.turns(NOW + 999, 10, 0) == []  # scheduled: no turn before its time
    start = await turn(store, "s", NOW + 1000)
    urgent = msg("s", 2, priority=Priority.HIGH)
    await store.add([urgent])  # while the turn decides to wait (its pacing, say)
    await store.end_turn(TurnEnd("s", NOW + 2000, start.head.id))
    assert (await turn(store, "s", NOW + 1000)).head.id == urgent.id


async def test_state_changes_keep_counts_and_finish_the_campaign(store: OutboxStore) -> None:
    await store.add_campaign(Campaign("cmp_1", "dec", created=NOW))
    ms = [msg("s", i, campaign="cmp_1") for i in range(3)]
    await store.add(ms)
    await send(store, await turn(store, "s"))
    cancel = ms[1]
    cancel.state, cancel.finished = State.CANCELLED, NOW + 1
    assert (await store.change(cancel, State.QUEUED)).written
    assert not (await store.change(cancel, State.QUEUED)).written  # compared and set
    got = await store.get_campaign("cmp_1")
    assert got is not None and got.total == 3 and got.state is CampaignState.RUNNING
    assert {k: v for k, v in got.counts.items() if v} == {"queued": 1, "sent": 1, "cancelled": 1}
    totals = await store.totals()
    assert (totals["queued"], totals["sent"], totals["cancelled"]) == (1, 1, 1)
    snap = await store.snapshot()
    assert snap.backlog == 1 and snap.oldest == pytest.approx(ms[2].created, abs=1e-5)
    start = await turn(store, "s", NOW + 20)
    assert start.head.id == ms[2].id and start.campaign is CampaignState.RUNNING
    m = start.head
    m.state = State.SENDING
    assert await store.begin_send(m) is Began.OK
    m.state, m.finished = State.FAILED, NOW + 21
    ended = await store.end_turn(TurnEnd("s", NOW + 21, m.id, m, State.SENDING))
    assert ended.written and ended.finished is not None
    assert ended.finished.state is CampaignState.FINISHED and ended.finished.finished == NOW + 21
    assert [x.id for x in await store.campaigns(10)] == ["cmp_1"]
    assert (await store.snapshot()).oldest is None


async def test_a_send_begins_only_if_nothing_changed(store: OutboxStore) -> None:
    await store.add_campaign(Campaign("cmp_1", "dec", created=NOW))
    ms = [msg("s", i, campaign="cmp_1") for i in range(2)]
    await store.add(ms)
    c = await store.get_campaign("cmp_1")
    assert c is not None
    for state, began in ((CampaignState.PAUSED, Began.PAUSED), (CampaignState.CANCELLED, Began.CANCELLED)):
        c.state = state
        await store.save_campaign(c)
        start = await turn(store, "s")
        assert start.campaign is state
        start.head.state = State.SENDING
        assert await store.begin_send(start.head) is began
        await store.end_turn(TurnEnd("s", NOW, start.head.id))
    c.state = CampaignState.RUNNING
    await store.save_campaign(c)
    start = await turn(store, "s")
    # cancelled by the client between the turn's start and its send
    kept = await store.get(start.head.id)
    assert kept is not None
    kept.state = State.CANCELLED
    assert (await store.change(kept, State.QUEUED)).written
    start.head.state = State.SENDING
    assert await store.begin_send(start.head) is Began.LOST
    await store.end_turn(TurnEnd("s", NOW, start.head.id))
    # a turn that is not this store's (never given, or its lease gone)
    other = msg("t", 1)
    await store.add([other])
    other.state = State.SENDING
    assert await store.begin_send(other) is Began.LOST


async def test_an_explicit_retry_puts_a_failed_message_back_in_its_queue(store: OutboxStore) -> None:
    m = msg("s", 1)
    await store.add([m])
    start = await turn(store, "s")
    m = start.head
    m.state, m.finished = State.FAILED, NOW
    await store.end_turn(TurnEnd("s", NOW, m.id, m, State.QUEUED))
    assert await store.turns(NOW + 10, 10, 0) == []
    assert (await store.totals())["failed"] == 1
    m.state, m.finished = State.QUEUED, None
    assert (await store.change(m, State.FAILED)).written
    assert (await turn(store, "s", NOW + 10)).head.id == m.id
    assert (await store.totals())["queued"] == 1


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


async def test_concurrent_adds_each_keep_their_key(store: OutboxStore) -> None:
    """Adds made at once share script calls (Redis): each still gets its own answer."""
    keys = [IdempotencyKey("c", f"k{i % 50}", "fp") for i in range(200)]
    got = await asyncio.gather(*(store.add([msg(f"s{i % 7}", i)], k, 60) for i, k in enumerate(keys)))
    assert len({g[0].id for g in got}) == 50
    assert (await store.totals())["queued"] == 50


async def test_pacing_paused_and_deepest(store: OutboxStore) -> None:
    await store.add([msg("s", i) for i in range(3)])
    await send(store, await turn(store, "s"), at=NOW)
    start = await turn(store, "s", NOW + 4)
    assert (start.not_before, start.sent) == (NOW + 2, [NOW])
    await send(store, start, at=NOW + 4)
    p = await store.pacing("s")
    assert p.not_before == NOW + 6 and p.sent == [NOW, NOW + 4]
    start = await turn(store, "s", NOW + 70)
    assert start.sent == [NOW, NOW + 4]  # within the horizon (a day)
    assert (await store.turns(NOW + 70, 10, 0)) == []
    await store.end_turn(TurnEnd("s", NOW + 70, start.head.id))
    only_recent = await store.turns(NOW + 70, 10, 60)
    assert only_recent[0].sent == []  # nothing within the last minute
    await store.set_paused("s", True)
    assert await store.paused("s") and not await store.paused("t")
    assert (await store.snapshot()).sessions_paused == 1
    await store.end_turn(TurnEnd("s", NOW + 80, only_recent[0].head.id))
    assert (await turn(store, "s", NOW + 80)).paused
    await store.set_paused("s", False)
    assert not await store.paused("s")
    await store.add([msg("deep", i) for i in range(3)] + [msg("shallow", 9)])
    assert await store.deepest(5) == [("deep", 3), ("s", 1), ("shallow", 1)]


async def test_wake_gives_a_waiting_session_its_turn_now(store: OutboxStore) -> None:
    m = msg("s", 1)
    await store.add([m])
    start = await turn(store, "s")
    await store.end_turn(TurnEnd("s", NOW + 500, start.head.id))
    assert await store.turns(NOW + 1, 10, 0) == []
    await store.wake("s", NOW + 1)
    assert (await turn(store, "s", NOW + 1)).head.id == m.id


async def test_a_renewed_turn_is_not_taken_and_sweep_forgets_old_messages(store: OutboxStore) -> None:
    m = msg("s", 1)
    await store.add([m])
    start = await turn(store, "s")
    await store.renew(["s"], NOW + 5)
    assert await store.turns(NOW + 6, 10, 0) == []  # still ours (Redis: pushed back with the lease)
    await send(store, start)
    assert await store.sweep(NOW + 5, 100) == 0  # it ended at NOW + 10
    assert await store.sweep(NOW + 11, 100) == 1
    assert await store.get(m.id) is None


async def test_a_large_add_to_one_session_keeps_every_message(store: OutboxStore) -> None:
    ms = [msg("big", i) for i in range(2500)]  # more than one write call's worth (1,000)
    await store.add(ms)
    assert await store.depth("big") == {"high": 0, "normal": 2500}
    assert (await turn(store, "big")).head.id == ms[0].id
    last = await store.get(ms[-1].id)
    assert last is not None and last.request == ms[-1].request


async def test_acks_find_their_message_and_unacked_ones_are_counted_once(store: OutboxStore) -> None:
    a, b = msg("s", 1), msg("s", 2)
    await store.add([a, b])
    for m, at in ((await send(store, await turn(store, "s"), at=NOW + 10), NOW + 10),
                  (await send(store, await turn(store, "s", NOW + 20), at=NOW + 20), NOW + 20)):
        m.wa_id, m.sent_at = f"true_{m.id[-6:]}", at
        await store.track(m, None)
    assert await store.crossed(NOW + 15) == 1  # a, sent at NOW + 10
    assert await store.crossed(NOW + 15) == 0  # counted once
    assert await store.unacked(NOW + 100, 10) == (2, [a.id, b.id])
    found = await store.by_wa("s", f"true_{a.id[-6:]}")
    assert found is not None and found.id == a.id and found.state is State.SENT
    found.delivery = {"ack": "device", "at": NOW + 30}
    assert await store.acked(found)
    assert (await store.get(a.id)).delivery == {"ack": "device", "at": NOW + 30}  # type: ignore[union-attr]
    assert await store.unacked(NOW + 100, 10) == (1, [b.id])
    assert await store.by_wa("s", "true_nope") is None


async def test_an_unknown_message_meets_its_message_any_in_either_order(store: OutboxStore) -> None:
    early, late, other = msg("s", 1), msg("s", 2), msg("s", 3)
    await store.add([early, late, other])
    # the instance's message.any first, then the send is found unknown: it takes that id
    assert await store.seen("s", "key-1", "true_1", NOW, 120) is None
    assert await store.unknown(early, "key-1", NOW + 1, 120) == Sighting("true_1")
    # unknown first: it waits; the message.any settles it
    assert await store.unknown(late, "key-2", NOW + 2, 120) is None
    assert await store.seen("s", "key-2", "true_2", NOW + 3, 120) == late.id
    assert await store.seen("s", "key-2", "true_2b", NOW + 4, 120) is None  # settled once
    # outside the window: not a match
    assert await store.seen("s", "key-3", None, NOW, 120) is None
    assert await store.unknown(early, "key-3", NOW + 500, 120) is None


async def test_a_message_any_of_a_message_sent_normally_settles_nothing(store: OutboxStore) -> None:
    sent_one, unknown_one = msg("s", 1), msg("s", 2)
    await store.add([sent_one, unknown_one])
    sent_one.state, sent_one.wa_id, sent_one.sent_at = State.SENT, "true_a", NOW
    # its message.any before the router tracked it: forgotten when it is tracked
    assert await store.seen("s", "same-text", "true_a", NOW, 120) is None
    await store.track(sent_one, "same-text")
    assert await store.unknown(unknown_one, "same-text", NOW + 1, 120) is None
    # after: a message.any whose id is a message sent already settles nothing, nor is kept
    assert await store.seen("s", "same-text", "true_a", NOW + 2, 120) is None
    assert await store.seen("s", "same-text", "true_new", NOW + 2, 120) == unknown_one.id
    other = msg("s", 3)
    await store.add([other])
    assert await store.seen("s", "text-b", "true_a", NOW + 3, 120) is None
    assert await store.unknown(other, "text-b", NOW + 4, 120) is None
