"""RedisStore against a real redis-server started on a free loopback port for each test."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router.config.loader import parse_config
from router.errors import ConfigError, StoreUnavailable
from router.redis_url import SentinelURL, is_sentinel_url, parse_sentinel_url
from router.store import RedisStore as ExportedRedisStore
from router.store.base import Assignment, StaleEpoch
from router.store.redis import RedisStore
from tests.redis_replies import command, number, text
from tests.redis_server import RedisServer, SentinelServer, free_port

pytestmark = pytest.mark.system  # real processes (see tests/conftest.py: layers)

PREFIX = "t:"
MakeStore = Callable[..., Awaitable[RedisStore]]


class Watcher:
    """An ``on_change`` that records every change and lets a test wait on a condition;
    ``listen`` is a store listener (``add_listener``) recording into ``heard``."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, Assignment | None]] = []
        self.heard: list[tuple[str, Assignment | None]] = []
        self._event = asyncio.Event()

    def __call__(self, assignment: Assignment | None, session: str) -> None:
        self.changes.append((session, assignment))
        self._event.set()

    def listen(self, session: str, assignment: Assignment | None) -> None:
        self.heard.append((session, assignment))
        self._event.set()

    def heard_of(self, session: str) -> list[Assignment | None]:
        return [a for s, a in self.heard if s == session]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._event.clear()
                await self._event.wait()

    def sessions(self) -> set[str]:
        return {s for s, _ in self.changes}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path).start()
    yield s
    s.kill()


@pytest.fixture
async def rc(server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client, to look at (and tamper with) what the stores wrote."""
    client = Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def make_store(server: RedisServer) -> AsyncIterator[MakeStore]:
    made: list[RedisStore] = []

    async def make(prefix: str = PREFIX, url: str | None = None, **kw: Any) -> RedisStore:
        store = RedisStore(url or server.url, prefix, **kw)
        made.append(store)
        await store.start()
        return store

    yield make
    for store in made:
        await store.close()


async def barrier(writer: RedisStore, *readers: tuple[RedisStore, Watcher]) -> None:
    """Return once every reader has applied every change ``writer`` made before: changes
    arrive in order, so seeing a later change means having seen the earlier ones."""
    session = f"barrier-{uuid.uuid4().hex}"
    await writer.create_if_absent(session, "barrier")
    await writer.remove(session)
    for _, watcher in readers:
        def removed(w: Watcher = watcher) -> bool:
            return (session, None) in w.changes

        await watcher.wait_for(removed)


async def redis_map(rc: Redis, prefix: str = PREFIX) -> dict[str, Assignment]:
    out = {}
    for raw_session, raw_value in (await rc.hgetall(prefix + "assignments")).items():
        session, value = text(raw_session), text(raw_value)
        moving = value.endswith(":m")
        instance, _, epoch = value.removesuffix(":m").rpartition(":")
        out[session] = Assignment(session, instance, int(epoch), moving)
    return out


async def seed(rc: Redis, entries: dict[str, Assignment], prefix: str = PREFIX) -> None:
    """Write a map the way the scripts would, pipelined, without publishing."""
    items = list(entries.values())
    async with rc.pipeline(transaction=False) as pipe:
        for i in range(0, len(items), 5000):
            chunk = items[i : i + 5000]
            pipe.hset(prefix + "assignments", mapping={a.session: f"{a.instance}:{a.epoch}" for a in chunk})
        counts = Counter(a.instance for a in items)
        if counts:
            by_instance: dict[Any, Any] = dict(counts)  # redis-py's mapping type is invariant
            pipe.hset(prefix + "counts", mapping=by_instance)
        pipe.set(prefix + "epoch", max((a.epoch for a in items), default=0))
        await pipe.execute()


async def commandstats(rc: Redis) -> dict[str, int]:
    info = await rc.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


# -- the interface ----------------------------------------------------------------------------


async def test_create_if_absent_first_writer_wins_across_two_stores(make_store: MakeStore, rc: Redis) -> None:
    a, b = await make_store(), await make_store()
    sessions = [f"race-{i}" for i in range(200)]
    calls = [st.create_if_absent(s, name) for s in sessions for st, name in ((a, "node-a"), (b, "node-b"))]
    results = await asyncio.gather(*calls)
    stored = await redis_map(rc)
    assert len(stored) == 200
    for i, session in enumerate(sessions):
        via_a, via_b = results[2 * i], results[2 * i + 1]
        # Both routers got the same answer, it is what Redis holds, and both caches agree.
        assert via_a == via_b == stored[session] == a.cached(session) == b.cached(session)
    counts = {k: int(v) for k, v in (await rc.hgetall(PREFIX + "counts")).items()}
    assert sum(counts.values()) == 200
    assert counts == dict(Counter(x.instance for x in stored.values())) == dict(a.counts()) == dict(b.counts())
    assert len(a) == len(b) == 200


async def test_move_takes_a_new_epoch_and_compare_and_set_refuses_a_stale_one(make_store: MakeStore) -> None:
    store = await make_store()
    first = await store.create_if_absent("s", "n1")
    assert (await store.create_if_absent("s", "n2")) == first  # already placed
    moved = await store.move("s", "n2", first.epoch)
    assert moved.instance == "n2" and moved.epoch > first.epoch
    assert store.cached("s") == moved and dict(store.counts()) == {"n2": 1}

    with pytest.raises(StaleEpoch) as stale:
        await store.move("s", "n3", first.epoch)
    assert stale.value.current == moved
    again = await store.move("s", "n3", None)  # no CAS: always moves
    assert again.epoch > moved.epoch and again.instance == "n3"

    with pytest.raises(StaleEpoch) as stale:
        await store.remove("s", moved.epoch)
    assert stale.value.current == again
    assert await store.remove("s", again.epoch) is True
    assert await store.remove("s") is False
    assert store.cached("s") is None and len(store) == 0 and dict(store.counts()) == {}
    with pytest.raises(StaleEpoch) as stale:
        await store.move("s", "n1", again.epoch)
    assert stale.value.current is None

    # Epochs are never reused, even for a session removed and created again.
    reborn = await store.create_if_absent("s", "n1")
    assert reborn.epoch > again.epoch
    created_by_move = await store.move("other", "n2", None)
    assert created_by_move.epoch > reborn.epoch and await store.get("other") == created_by_move
    assert await store.list("n1") == [reborn] and len(await store.list()) == 2


async def test_get_reads_redis_on_a_cache_miss_and_caches_it(make_store: MakeStore, rc: Redis) -> None:
    store = await make_store()
    assert await store.get("nobody") is None
    await rc.hset(PREFIX + "assignments", "quiet", "n7:41")  # written without a message
    assert store.cached("quiet") is None
    assert await store.get("quiet") == Assignment("quiet", "n7", 41)
    assert store.cached("quiet") == Assignment("quiet", "n7", 41)


async def test_counts_stay_consistent_under_random_concurrent_writes(make_store: MakeStore, rc: Redis) -> None:
    wa, wb = Watcher(), Watcher()
    a, b = await make_store(on_change=wa), await make_store(on_change=wb)
    rng = random.Random(1234)
    sessions = [f"s{i}" for i in range(80)]
    instances = [f"n{i}" for i in range(6)]

    async def one_op(store: RedisStore) -> None:
        session, instance, kind = rng.choice(sessions), rng.choice(instances), rng.random()
        cached = store.cached(session)
        try:
            if kind < 0.4:
                await store.create_if_absent(session, instance)
            elif kind < 0.7:
                await store.move(session, instance, cached.epoch if cached and rng.random() < 0.5 else None)
            else:
                await store.remove(session, cached.epoch if cached and rng.random() < 0.5 else None)
        except StaleEpoch:
            pass  # expected: the two stores race on the same sessions

    for _ in range(30):  # 30 rounds of 20 concurrent operations through both stores
        await asyncio.gather(*(one_op(rng.choice((a, b))) for _ in range(20)))
    await barrier(a, (b, wb))
    await barrier(b, (a, wa))

    stored = await redis_map(rc)
    recount = dict(Counter(x.instance for x in stored.values()))
    redis_counts = {k: int(v) for k, v in (await rc.hgetall(PREFIX + "counts")).items()}
    assert redis_counts == recount
    for store in (a, b):
        cache = {s: c for s in sessions if (c := store.cached(s)) is not None}
        assert cache == stored
        assert dict(store.counts()) == recount == dict(Counter(x.instance for x in cache.values()))


async def test_a_move_in_one_store_reaches_the_other_within_100ms(make_store: MakeStore) -> None:
    watcher = Watcher()
    a, b = await make_store(), await make_store(on_change=watcher)
    placed = [await a.create_if_absent(f"m{i}", "n1") for i in range(30)]
    await barrier(a, (b, watcher))
    latencies = []
    for p in placed:
        start = time.perf_counter()
        moved = await a.move(p.session, "n2", p.epoch)

        def seen(m: Assignment = moved) -> bool:
            return b.cached(m.session) == m

        await watcher.wait_for(seen, timeout=1.0)
        latencies.append(time.perf_counter() - start)
    print(
        f"\nmove visible in the other store: median {statistics.median(latencies) * 1e3:.2f} ms, "
        f"max {max(latencies) * 1e3:.2f} ms over {len(latencies)} moves"
    )
    assert max(latencies) < 0.1
    assert (watcher.changes[-1][1]) == b.cached(placed[-1].session)  # on_change got the new one


# -- reconnects and outages -------------------------------------------------------------------


async def test_cache_is_rebuilt_after_a_pubsub_disconnect(make_store: MakeStore, rc: Redis) -> None:
    watcher = Watcher()
    a, b = await make_store(), await make_store(on_change=watcher)
    for i in range(30):
        await a.create_if_absent(f"r{i}", "n1")
    await barrier(a, (b, watcher))
    # Changes b is never told about (no PUBLISH): exactly what a disconnected
    # subscriber misses.
    epoch = int(await rc.incr(PREFIX + "epoch"))
    await rc.hset(PREFIX + "assignments", mapping={"r0": f"n2:{epoch}", "ghost": f"n3:{epoch}"})
    await rc.hdel(PREFIX + "assignments", "r1")
    assert b.cached("r1") is not None and b.cached("ghost") is None  # b is stale...
    resyncs = b.resyncs

    assert number(await command(rc, "CLIENT", "KILL", "TYPE", "pubsub")) == 2  # a's and b's
    await watcher.wait_for(lambda: b.resyncs > resyncs)
    # ...and after the reconnection nothing stale is left.
    stored = await redis_map(rc)
    assert {s: b.cached(s) for s in stored} == stored and len(b) == len(stored)
    assert b.cached("r1") is None and b.cached("r0") == Assignment("r0", "n2", epoch)
    assert dict(b.counts()) == dict(Counter(x.instance for x in stored.values()))
    assert b.healthy and b.synced
    assert {"r0", "r1", "ghost"} <= watcher.sessions()  # on_change told about the differences
    # The new subscription delivers changes again.
    moved = await a.move("r2", "n9", None)
    await watcher.wait_for(lambda: b.cached("r2") == moved)


async def test_redis_killed_then_restarted(make_store: MakeStore, server: RedisServer) -> None:
    store = await make_store()
    before = [await store.create_if_absent(f"k{i}", f"n{i % 3}") for i in range(50)]

    server.kill()
    start = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        await store.create_if_absent("new-1", "n1")
    assert time.perf_counter() - start < 0.5
    assert await store.wait_health(False, timeout=2)
    assert not store.healthy
    start = time.perf_counter()
    for call in (
        store.create_if_absent("new-2", "n1"),
        store.move("k0", "n2", None),
        store.remove("k1"),
        store.get("unknown"),
    ):
        with pytest.raises(StoreUnavailable):
            await call
    assert time.perf_counter() - start < 0.05  # refused at once while known down
    # Known sessions keep answering from the cache.
    assert all(store.cached(a.session) == a for a in before)
    assert await store.get("k3") == before[3]
    assert sum(store.counts().values()) == 50

    server.start()  # same port, same directory: the AOF is replayed
    assert await store.wait_health(True, timeout=10)
    assert store.synced
    async with Redis.from_url(server.url, decode_responses=True) as rc:
        stored = await redis_map(rc)
    assert all(stored[a.session] == a for a in before)  # nothing written before the kill is lost
    new = await store.create_if_absent("new-3", "n1")
    assert new.epoch > max(a.epoch for a in before)  # the epoch counter survived too
    assert (await store.move("k0", "n2", before[0].epoch)).instance == "n2"
    fresh = await make_store()
    assert len(fresh) == 51 and fresh.cached("new-3") == new


async def test_start_gives_up_quickly_when_redis_is_down() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", start_timeout=0.5)
    start = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        await store.start()
    assert time.perf_counter() - start < 2.0
    assert not store.healthy
    await store.close()  # idempotent


async def test_prefixes_are_isolated(make_store: MakeStore, rc: Redis) -> None:
    w1, w2 = Watcher(), Watcher()
    one, two = await make_store("p1:", on_change=w1), await make_store("p2:", on_change=w2)
    writer1, writer2 = await make_store("p1:"), await make_store("p2:")
    await writer1.create_if_absent("same", "n1")
    await writer1.create_if_absent("only-one", "n1")
    await writer2.create_if_absent("same", "n2")
    await barrier(writer1, (one, w1))
    await barrier(writer2, (two, w2))
    assert one.cached("same") == Assignment("same", "n1", 1)
    assert two.cached("same") == Assignment("same", "n2", 1)
    assert two.cached("only-one") is None and len(two) == 1
    assert dict(one.counts()) == {"n1": 2} and dict(two.counts()) == {"n2": 1}
    assert "only-one" not in w2.sessions()  # never told about p1's changes
    assert set(await rc.keys("p1:*")) == {"p1:assignments", "p1:counts", "p1:epoch"}


# -- bulk load and the hot path ---------------------------------------------------------------


async def test_a_fresh_store_loads_the_whole_map_with_hscan(make_store: MakeStore, rc: Redis) -> None:
    rng = random.Random(7)
    entries = {
        f"bulk-{i}": Assignment(f"bulk-{i}", f"node-{rng.randrange(20)}", rng.randrange(1, 10**6))
        for i in range(25_000)
    }
    await seed(rc, entries)
    await rc.config_resetstat()
    store = await make_store()
    stats = await commandstats(rc)
    assert stats.get("hscan", 0) >= 3  # 25,000 fields in chunks of ~10,000
    assert "hget" not in stats and "hgetall" not in stats
    assert len(store) == 25_000
    assert all(store.cached(s) == a for s, a in entries.items())
    assert dict(store.counts()) == dict(Counter(a.instance for a in entries.values()))


async def test_cached_lookups_make_no_redis_round_trip(make_store: MakeStore, rc: Redis) -> None:
    store = await make_store()
    placed = [await store.create_if_absent(f"c{i}", "n1") for i in range(100)]
    await rc.config_resetstat()
    for _ in range(100):
        for a in placed:
            assert store.cached(a.session) == a
            assert await store.get(a.session) == a
        assert store.counts()["n1"] == 100 and len(store) == 100
    stats = await commandstats(rc)
    assert set(stats) <= {"config|resetstat", "info"}, stats


async def test_exported_from_the_package() -> None:
    assert ExportedRedisStore is RedisStore


async def test_repr_tells_where_what_and_how_without_the_password(make_store: MakeStore, server: RedisServer) -> None:
    store = await make_store(url=f"redis://:s3cret@127.0.0.1:{server.port}/0")
    await store.create_if_absent("s", "n1")
    where = f"redis://127.0.0.1:{server.port}/0 prefix='t:'"
    assert repr(store) == f"<RedisStore {where} sessions=1 healthy resyncs=1>"
    server.kill()
    assert await store.wait_health(False, timeout=5)
    assert repr(store) == f"<RedisStore {where} sessions=1 unavailable, re-reading resyncs=1>"
    await store.close()
    assert repr(store) == f"<RedisStore {where} sessions=1 not connected resyncs=1>"


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://h1/mymaster", SentinelURL((("h1", 26379),), "mymaster")),
        (
            "redis+sentinel://:p%40ss@h1:26379,h2:26380/svc/2",
            SentinelURL((("h1", 26379), ("h2", 26380)), "svc", 2, None, "p@ss"),
        ),
        (
            "redis+sentinel://user:pw@[::1]:5000,10.0.0.2/svc/?sentinel_password=sp",
            SentinelURL((("::1", 5000), ("10.0.0.2", 26379)), "svc", 0, "user", "pw", "sp"),
        ),
        ("REDIS+SENTINEL://h/s", SentinelURL((("h", 26379),), "s")),
    ],
)
def test_sentinel_url_parses(url: str, expected: SentinelURL) -> None:
    assert is_sentinel_url(url)
    parsed = parse_sentinel_url(url)
    assert parsed == expected
    assert (parsed.username, parsed.password, parsed.sentinel_password) == (
        expected.username,
        expected.password,
        expected.sentinel_password,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/0",
        "redis+sentinel://:SECRETPW@h1",
        "redis+sentinel://:SECRETPW@h1/",
        "redis+sentinel://:SECRETPW@/svc",
        "redis+sentinel://:SECRETPW@h1,/svc",
        "redis+sentinel://:SECRETPW@h1:0/svc",
        "redis+sentinel://:SECRETPW@h1:99999/svc",
        "redis+sentinel://:SECRETPW@h1:x/svc",
        "redis+sentinel://:SECRETPW@[::1/svc",
        "redis+sentinel://:SECRETPW@h1/svc/db",
        "redis+sentinel://:SECRETPW@h1/svc/0/extra",
        "redis+sentinel://:SECRETPW@h1/svc?password=SECRETPW",
    ],
)
def test_bad_sentinel_urls_are_refused_without_showing_them(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_sentinel_url(url)
    assert "SECRETPW" not in str(info.value)


def test_config_accepts_sentinel_urls_and_hides_their_problems() -> None:
    base = "instances: [{name: a, url: 'http://x:1'}]\n"
    config = parse_config(base + "store: {url: 'redis+sentinel://:pw@s1:26379,s2/mymaster/1'}")
    assert config.store.url is not None and config.store.url.value.startswith("redis+sentinel://")
    with pytest.raises(ConfigError) as info:
        parse_config(base + "store: {url: 'redis+sentinel://:SECRETPW@s1:26379'}")
    assert info.value.problems == [
        "store.url: redis+sentinel:// URL needs a service name: .../service_name[/db]"
    ]


async def test_sentinel_url_reaches_the_master(tmp_path: Path, server: RedisServer, rc: Redis) -> None:
    sentinel = SentinelServer(tmp_path, server, "wa")
    try:
        sentinel.start()
    except (RuntimeError, TimeoutError) as e:
        pytest.skip(f"cannot run redis-server --sentinel here: {e}")
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/wa/0"
        watcher = Watcher()
        a = RedisStore(url, PREFIX)
        b = RedisStore(url, PREFIX, on_change=watcher)
        await a.start()
        await b.start()
        try:
            created = await a.create_if_absent("via-sentinel", "n1")
            await watcher.wait_for(lambda: b.cached("via-sentinel") == created)
            assert (await redis_map(rc))["via-sentinel"] == created  # the monitored master
        finally:
            await a.close()
            await b.close()
    finally:
        sentinel.kill()


async def test_an_unresponsive_redis_is_noticed_and_nothing_hangs(
    make_store: MakeStore, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    fast = {"connect_timeout": 0.2, "op_timeout": 0.2, "keepalive": 0.3}
    watcher = Watcher()
    idle, busy = await make_store(on_change=watcher, **fast), await make_store(**fast)
    placed = await busy.create_if_absent("known", "n1")
    await barrier(busy, (idle, watcher))  # idle learned it through pub/sub
    server.pause()  # SIGSTOP: sockets stay open, nothing answers
    try:
        start = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await busy.create_if_absent("new", "n1")
        assert time.perf_counter() - start < 4 * (0.2 + 0.2)  # bounded, not hanging
        assert not busy.healthy
        # The idle store sees no failed command: its pub/sub keepalive notices.
        assert await idle.wait_health(False, timeout=3)
        for _ in range(100):  # many refused writes, one warning per store
            with pytest.raises(StoreUnavailable):
                await idle.create_if_absent("new", "n1")
        assert idle.cached("known") == placed == busy.cached("known")
    finally:
        server.resume()
    assert await idle.wait_health(True, timeout=5) and await busy.wait_health(True, timeout=5)
    # The timed-out write may still have been applied once Redis resumed (a timeout cannot
    # tell): either way, both stores agree on one answer.
    settled = await idle.create_if_absent("new", "n2")
    assert await busy.create_if_absent("new", "n3") == settled
    warnings = [r.getMessage() for r in caplog.records if r.name == "router.store.redis"]
    assert sum("unavailable" in w for w in warnings) == 2, warnings
    assert sum("available again" in w for w in warnings) == 2, warnings


async def test_unix_socket_url(make_store: MakeStore, server: RedisServer) -> None:
    over_tcp = await make_store()
    over_unix = await make_store(url=f"unix://{server.unixsocket}?db=0")
    created = await over_unix.create_if_absent("via-unix", "n1")
    assert await over_tcp.get("via-unix") == created


async def test_idle_keepalive_does_not_disturb_a_healthy_store(make_store: MakeStore, rc: Redis) -> None:
    store = await make_store(keepalive=0.05, op_timeout=0.2, connect_timeout=0.2)
    await rc.config_resetstat()
    # No event to wait for: time passing idle is the point (a PING every ~0.3 s: the
    # listener checks each 0.25 s tick whether the connection was idle for 0.05 s).
    await asyncio.sleep(1.0)
    assert store.healthy and store.synced and store.resyncs == 1
    assert (await commandstats(rc)).get("ping", 0) >= 2  # the keepalive ran and was answered


# -- the moving flag across routers -----------------------------------------------------------


async def test_moving_reaches_every_router_and_a_settle_anywhere_clears_it_everywhere(
    make_store: MakeStore, rc: Redis
) -> None:
    wa, wb = Watcher(), Watcher()
    a, b = await make_store(on_change=wa), await make_store(on_change=wb)
    a.add_listener(wa.listen)
    b.add_listener(wb.listen)
    placed = await a.create_if_absent("s", "n1")
    await barrier(a, (b, wb))

    moved = await a.move("s", "n2", placed.epoch, moving=True)
    assert moved.moving and await rc.hget(PREFIX + "assignments", "s") == f"n2:{moved.epoch}:m"
    assert wa.heard_of("s") == [placed, moved]  # a's listener heard its own writes at once
    await wb.wait_for(lambda: b.cached("s") == moved)
    assert b.counts()["n2"] == 1 and "n1" not in b.counts()
    assert ("s", moved) in wb.changes and wb.heard_of("s") == [placed, moved]

    settled = await b.settle("s", moved.epoch)  # the other router settles
    assert settled == Assignment("s", "n2", moved.epoch)
    assert await rc.hget(PREFIX + "assignments", "s") == f"n2:{moved.epoch}"
    assert b.cached("s") == settled and wb.heard_of("s")[-1] == settled
    await wa.wait_for(lambda: a.cached("s") == settled)  # same epoch, yet applied
    assert wa.changes[-1] == ("s", settled)  # on_change: a settle by another process
    assert wa.heard_of("s") == [placed, moved, settled]
    await barrier(a, (b, wb))
    assert wb.heard_of("s") == [placed, moved, settled]  # its own message is not repeated

    again = await a.move("s", "n3", settled.epoch, moving=True)
    fresh = await make_store()  # loaded by HSCAN: the flag is in the hash value
    assert fresh.cached("s") == again and again.moving


async def test_a_stale_settle_changes_nothing_anywhere(make_store: MakeStore, rc: Redis) -> None:
    wa, wb = Watcher(), Watcher()
    a, b = await make_store(on_change=wa), await make_store(on_change=wb)
    a.add_listener(wa.listen)
    b.add_listener(wb.listen)
    placed = await a.create_if_absent("s", "n1")
    first = await a.move("s", "n2", placed.epoch, moving=True)
    second = await a.move("s", "n3", first.epoch, moving=True)
    await barrier(a, (b, wb))
    assert b.cached("s") == second

    assert await b.settle("s", first.epoch) is None  # the restore of an older move ends
    assert await b.settle("ghost", 1) is None
    await barrier(b, (a, wa))
    await barrier(a, (b, wb))
    assert a.cached("s") == b.cached("s") == second and second.moving
    assert await rc.hget(PREFIX + "assignments", "s") == f"n3:{second.epoch}:m"
    assert wa.heard_of("s") == wb.heard_of("s") == [placed, first, second]
    assert "ghost" not in {s for s, _ in wa.heard + wb.heard}


async def test_a_late_message_never_sets_moving_back_on_the_same_epoch(
    make_store: MakeStore, rc: Redis
) -> None:
    watcher = Watcher()
    a, b = await make_store(), await make_store(on_change=watcher)
    b.add_listener(watcher.listen)
    moved = await a.move("s", "n2", None, moving=True)
    settled = await a.settle("s", moved.epoch)
    assert settled is not None
    await barrier(a, (b, watcher))
    assert b.cached("s") == settled
    heard = len(watcher.heard)
    # The moving message of this epoch again, as if delivered late: ignored.
    stale = {"op": "set", "s": "s", "i": "n2", "e": moved.epoch, "m": True}
    await rc.publish(PREFIX + "changes", json.dumps(stale))
    await barrier(a, (b, watcher))
    assert b.cached("s") == settled
    assert "s" not in {s for s, _ in watcher.heard[heard:]}
    # A value in the old form (no flag) is read as settled, one with ":m" as moving.
    await rc.hset(PREFIX + "assignments", mapping={"old": "n7:41", "mov": "n7:42:m", "c:o:l": "a:b:43:m"})
    assert await b.get("old") == Assignment("old", "n7", 41)
    assert await b.get("mov") == Assignment("mov", "n7", 42, moving=True)
    assert await b.get("c:o:l") == Assignment("c:o:l", "a:b", 43, moving=True)
    # ...and the scripts read both forms too.
    assert await b.settle("mov", 42) == Assignment("mov", "n7", 42)
    assert (await b.move("old", "n8", 41, moving=True)).epoch > 41


async def test_a_re_read_after_a_reconnect_brings_moving_changes_to_the_listeners(
    make_store: MakeStore, rc: Redis
) -> None:
    watcher = Watcher()
    a, b = await make_store(), await make_store(on_change=watcher)
    b.add_listener(watcher.listen)
    placed = await a.create_if_absent("r", "n1")
    await barrier(a, (b, watcher))

    async def resync(expected: Assignment) -> None:
        resyncs = b.resyncs
        await command(rc, "CLIENT", "KILL", "TYPE", "pubsub")
        await watcher.wait_for(lambda: b.resyncs > resyncs and b.cached("r") == expected)

    # Changes b misses (no PUBLISH): a move to a moving state, then its settle.
    epoch = int(await rc.incr(PREFIX + "epoch"))
    await rc.hset(PREFIX + "assignments", "r", f"n2:{epoch}:m")
    moving = Assignment("r", "n2", epoch, moving=True)
    await resync(moving)
    assert watcher.heard_of("r")[-1] == moving
    assert dict(b.counts()) == {"n2": 1}
    await rc.hset(PREFIX + "assignments", "r", f"n2:{epoch}")
    settled = Assignment("r", "n2", epoch)
    await resync(settled)
    assert watcher.heard_of("r") == [placed, moving, settled]


# -- leadership -------------------------------------------------------------------------------


async def test_two_routers_compete_for_the_lease_and_one_wins(make_store: MakeStore, rc: Redis) -> None:
    a, b = await make_store(), await make_store()
    for round_ in range(20):
        tokens = await asyncio.gather(
            a.acquire_leadership(f"a:{round_}", 5.0), b.acquire_leadership(f"b:{round_}", 5.0)
        )
        won = [t for t in tokens if t is not None]
        assert len(won) == 1, tokens
        winner, store = (f"a:{round_}", a) if tokens[0] is not None else (f"b:{round_}", b)
        loser = b if store is a else a
        token = won[0]
        assert await a.leader() == await b.leader() == winner  # holder names may hold ':'
        assert await rc.get(PREFIX + "leader") == f"{token}:{winner}"
        assert 0 < await rc.pttl(PREFIX + "leader") <= 5000
        assert await store.renew_leadership(winner, token, 5.0) is True
        assert await loser.renew_leadership("someone-else", token, 5.0) is False
        assert await loser.acquire_leadership(winner, 5.0) == token  # same holder, any process
        await loser.release_leadership(winner, token)  # whoever holds holder+token may release
        assert await a.leader() is None
    assert number(await rc.get(PREFIX + "leader_token")) == 20


async def test_a_silent_leader_is_replaced_within_its_ttl_and_a_release_hands_over_at_once(
    make_store: MakeStore,
) -> None:
    ttl = 0.3
    a, b = await make_store(), await make_store()
    first = await a.acquire_leadership("router-a", ttl)
    assert first is not None and await b.acquire_leadership("router-b", ttl) is None
    start = time.monotonic()
    second: int | None = None
    while second is None:  # router-a stops renewing (it died); router-b polls
        assert time.monotonic() - start < 3 * ttl, "no takeover"
        second = await b.acquire_leadership("router-b", ttl)
        if second is None:
            await asyncio.sleep(0.02)
    assert time.monotonic() - start < 2 * ttl
    assert second > first
    assert await a.renew_leadership("router-a", first, ttl) is False  # a learns it lost
    assert await a.leader() == "router-b"

    await b.release_leadership("router-b", second)
    third = await a.acquire_leadership("router-a", ttl)  # no wait after a release
    assert third is not None and third > second


async def test_leadership_calls_fail_with_store_unavailable_when_redis_is_down(
    make_store: MakeStore, server: RedisServer
) -> None:
    store = await make_store()
    token = await store.acquire_leadership("router-a", 10.0)
    assert token is not None
    server.kill()
    start = time.perf_counter()
    for call in (
        store.renew_leadership("router-a", token, 10.0),
        store.acquire_leadership("router-a", 10.0),
        store.release_leadership("router-a", token),
        store.leader(),
    ):
        with pytest.raises(StoreUnavailable):
            await call
    assert time.perf_counter() - start < 1.0
    server.start()  # the AOF keeps the lease and the token counter
    assert await store.wait_health(True, timeout=10)
    assert await store.leader() == "router-a"
    assert await store.renew_leadership("router-a", token, 10.0) is True
    await store.release_leadership("router-a", token)
    assert (await store.acquire_leadership("router-b", 10.0) or 0) > token
