"""``Idempotency-Key`` end to end, with real processes: routers, sims, redis-server.

A client that retries a ``POST /api/sendText`` with the same key must never make a message
go out twice, whatever happens meanwhile (an instance SIGKILLed with requests in flight,
the retry going through another router, retries racing their originals). The sims'
``/sim/sent`` is the ground truth; every answer a key got must agree with its first: the
same status and body when replayed (``Idempotent-Replayed: true``), 409
``idempotency_in_flight`` while the first is being answered, or 502 ``outcome_unknown``
when the first died in flight."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from tests.procs import Proc, RouterProc, bounded, router_config
from tests.redis_server import RedisServer
from tests.test_outbox_crash import poll, sim_sent

pytestmark = pytest.mark.system

FAST_FAILOVER = """
failover: {grace: 1s, leader_ttl: 1s, hold_timeout: 5s}
health: {interval: 300ms, timeout: 300ms}
"""
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=20)


def store(redis: RedisServer, prefix: str) -> str:
    return f"store: {{url: '{redis.url}', prefix: '{prefix}'}}\n"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    replayed: bool

    @property
    def error(self) -> str | None:
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc.get("error") if isinstance(doc, dict) else None


@dataclass(frozen=True)
class Keyed:
    """One logical send: its key and the exact body every try carries."""

    key: str
    session: str
    text: str

    @property
    def body(self) -> bytes:
        return json.dumps({"session": self.session, "chatId": "1@c.us", "text": self.text}).encode()


async def send(http: aiohttp.ClientSession, r: RouterProc, k: Keyed) -> Answer:
    headers = {"Idempotency-Key": k.key, "Content-Type": "application/json"}
    try:
        async with http.post(r.url + "/api/sendText", data=k.body, headers=headers) as resp:
            return Answer(resp.status, await resp.read(),
                          resp.headers.get("Idempotent-Replayed") == "true")
    except (aiohttp.ClientError, TimeoutError) as e:  # no answer at all: recorded as such
        return Answer(0, repr(e).encode(), False)


async def place(http: aiohttp.ClientSession, r: RouterProc, sessions: list[str]) -> dict[str, str]:
    placed: dict[str, str] = {}
    for s in sessions:
        async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
            assert resp.status == 201, await resp.text()
            placed[s] = resp.headers["X-Router-Instance"]
    return placed


def check_key(k: Keyed, answers: list[Answer], times_sent: int) -> str:
    """Every answer ``k`` got agrees with its first, and it went out at most once; what the
    key ended as (for the summary)."""
    what = f"{k.key}: {[(a.status, a.error, a.replayed) for a in answers]}, sent {times_sent}x"
    assert times_sent <= 1, what  # never a second send
    assert all(a.status != 0 for a in answers), what  # every try was answered
    assert not any(a.status == 422 for a in answers), what  # the same body every time
    for a in answers:
        if a.status == 409:
            assert a.error == "idempotency_in_flight" and not a.replayed, what
    fresh = [a for a in answers if not a.replayed and a.status != 409]
    replays = [a for a in answers if a.replayed]
    unknown = [a for a in replays if a.error == "outcome_unknown"]
    kept = [a for a in replays if a.error != "outcome_unknown"]
    assert not (unknown and kept), what  # a key ends one way
    for a in unknown:
        assert a.status == 502, what
    if kept:
        # The kept answer, byte for byte, and it was some try's own answer.
        assert len({(a.status, a.body) for a in kept}) == 1, what
        assert (kept[0].status, kept[0].body) in {(a.status, a.body) for a in fresh}, what
    ok = [a for a in fresh if 200 <= a.status < 300]
    assert len(ok) <= 1, what  # one try was sent, at most
    if ok or any(200 <= a.status < 300 for a in kept):
        assert times_sent == 1, what
        assert not unknown, what
        return "sent"
    if unknown or any(a.error == "upstream_error" for a in fresh):
        return "outcome_unknown"  # the first try died in flight (its retries were told so)
    return "not_sent" if times_sent == 0 else "sent_unanswered"


async def test_retries_across_an_instance_killed_mid_load_never_send_twice(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer,
) -> None:
    sims = [sim_factory(f"node-{i}") for i in (1, 2, 3)]
    r = router_factory(router_config(sims, extra=FAST_FAILOVER + store(redis_server, "id1:")))
    sessions = [f"ik{i}" for i in range(6)]
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        placed = await place(http, r, sessions)
        victim_name = Counter(placed.values()).most_common(1)[0][0]
        victim = next(s for s in sims if s.name == victim_name)
        keys = [Keyed(f"key-{n:03d}", sessions[n % len(sessions)], f"ik-{n}") for n in range(100)]
        answers: dict[str, list[Answer]] = {k.key: [] for k in keys}
        done = 0

        async def one(n: int, k: Keyed) -> None:
            nonlocal done
            await asyncio.sleep(n * 0.04)  # keys start over 4 s: the kill lands mid-load
            if n % 2:  # the original and three retries at once
                answers[k.key] += await asyncio.gather(*(send(http, r, k) for _ in range(4)))
            else:  # three retries, each after the previous answer
                for _ in range(4):
                    answers[k.key].append(await send(http, r, k))
            done += 1

        load = asyncio.create_task(bounded(len(keys), (one(n, k) for n, k in enumerate(keys)),
                                           timeout=45))

        async def under_way() -> bool:
            return done >= 30

        await poll(under_way, 20, "a third of the keys answered")
        # The victim holds every send that reaches it from now on (they pile up in flight),
        # so what it sent before the kill can be read whole: the ground truth stays exact.
        async with http.post(victim.url + "/sim/faults", json={"sendText": {"delay": "60s"}}) as resp:
            assert resp.status == 200

        async def stuck() -> int:
            async with http.get(victim.url + "/sim/stats") as resp:
                calls = (await resp.json())["calls"]
            tried = sum(int(c.get("sendText", 0)) for c in calls.values())
            return tried - len(await sim_sent(http, [victim]))

        async def in_flight() -> bool:
            return await stuck() >= 2

        await poll(in_flight, 10, "sends in flight on the victim")
        held = await stuck()
        before = await sim_sent(http, [victim])
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(5)
        await load
        await asyncio.sleep(0.5)  # a window for a wrong (second) send to show
        after = await sim_sent(http, [s for s in sims if s is not victim])
    texts = Counter(m["text"] for m in before + after)
    assert max(texts.values()) == 1, sorted(t for t, n in texts.items() if n > 1)
    ends = Counter(check_key(k, answers[k.key], texts[k.text]) for k in keys)
    statuses = Counter((a.status, a.error if a.status >= 400 else None, a.replayed)
                       for v in answers.values() for a in v)
    assert set(ends) <= {"sent", "outcome_unknown"}, ends
    assert ends["sent"] >= 70, ends  # the load went on through the failover
    assert ends["outcome_unknown"] >= held, ends  # the sends in flight at the kill...
    # ... none of which went out: the victim was holding them when it died.
    assert all(texts[k.text] == 0 for k in keys
               if check_key(k, answers[k.key], texts[k.text]) == "outcome_unknown")
    assert sum(1 for v in answers.values() for a in v if a.replayed) >= 100, statuses
    print(f"\n{len(keys)} keys x 4 tries, {victim_name} SIGKILLed with {held} sends in flight: "
          f"{dict(ends)}; answers {dict(statuses)}")


async def test_a_retry_through_another_router_is_replayed(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], redis_server: RedisServer,
) -> None:
    cfg = router_config(three_sims, extra=store(redis_server, "id2:"))
    a, b = router_factory(cfg), router_factory(cfg)
    keys = [Keyed(f"ab-{n}", f"ab{n % 3}", f"ab-{n}") for n in range(10)]
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        await place(http, a, [f"ab{i}" for i in range(3)])
        for k in keys:
            first = await send(http, a, k)
            assert first.status == 201 and not first.replayed, first
            # The answer is kept in the background: a retry that quick may still find it
            # in flight (409), never sent.
            retry = await send(http, b, k)
            for _ in range(50):
                if retry.status != 409:
                    break
                await asyncio.sleep(0.05)
                retry = await send(http, b, k)
            assert retry.replayed and (retry.status, retry.body) == (first.status, first.body), retry
            again = await send(http, a, k)
            assert again.replayed and (again.status, again.body) == (first.status, first.body)
            other = await send(http, b, Keyed(k.key, k.session, k.text + "-changed"))
            assert other.status == 422 and other.error == "idempotency_key_reused", other
        await asyncio.sleep(0.5)  # a window for a wrong send to show
        sent = await sim_sent(http, three_sims)
    texts = Counter(m["text"] for m in sent)
    assert texts == Counter({k.text: 1 for k in keys}), texts


async def test_a_thousand_keys_with_retries_racing_their_originals(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], redis_server: RedisServer,
) -> None:
    r = router_factory(router_config(three_sims, extra=store(redis_server, "id3:")))
    sessions = [f"race{i}" for i in range(8)]
    keys = [Keyed(f"race-{n:04d}", sessions[n % len(sessions)], f"race-{n}") for n in range(1000)]
    rng = random.Random(17)
    retried = set(rng.sample(range(len(keys)), len(keys) // 10))
    tries: list[int] = []  # key indexes, a retried key's two tries side by side
    for n in range(len(keys)):
        tries += [n, n] if n in retried else [n]
    answers: dict[str, list[Answer]] = {k.key: [] for k in keys}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT,
                                     connector=aiohttp.TCPConnector(limit=64)) as http:
        await place(http, r, sessions)

        async def one(n: int) -> None:
            answers[keys[n].key].append(await send(http, r, keys[n]))

        t0 = loop.time()
        await bounded(64, (one(n) for n in tries), timeout=45)
        took = loop.time() - t0

        async def settled() -> bool:  # every send the sims acknowledged is listed
            return len(await sim_sent(http, three_sims)) >= len(keys)

        await poll(settled, 10, "every key sent")
        await asyncio.sleep(0.5)  # a window for a wrong send to show
        sent = await sim_sent(http, three_sims)
    texts = Counter(m["text"] for m in sent)
    assert max(texts.values()) == 1, sorted(t for t, n in texts.items() if n > 1)  # 0 duplicates
    assert set(texts) == {k.text for k in keys}  # and every key went out
    ends = Counter(check_key(k, answers[k.key], texts[k.text]) for k in keys)
    assert ends == Counter({"sent": len(keys)}), ends
    statuses = Counter((a.status, a.replayed) for v in answers.values() for a in v)
    assert statuses[(201, False)] == len(keys), statuses
    print(f"\n{len(tries)} tries of {len(keys)} keys ({len(retried)} raced) in {took:.1f}s: "
          f"{dict(statuses)}; {len(sent)} sent, none twice")
