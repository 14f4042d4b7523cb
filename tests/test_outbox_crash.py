"""The outbox across crashes, with real processes: routers and instances SIGKILLed mid
campaign, answers lost after a send. The sims' /sim/sent is the ground truth: nothing
answered 202 is lost, nothing is sent twice, and each session's order holds."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.procs import Proc, RouterProc, router_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.system

PACE = """
outbox:
  delay: {min: 100ms, max: 200ms}
  retries: {policy: constant, delay: 300ms, max_delay: 300ms, attempts: 20, jitter: 0}
failover: {grace: 1s, leader_ttl: 1s}
health: {interval: 300ms, timeout: 300ms}
"""


async def sim_sent(http: aiohttp.ClientSession, sims: list[Proc]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in sims:
        if s.proc.poll() is not None:
            continue
        async with http.get(s.url + "/sim/sent") as r:
            out += await r.json()
    return out


async def poll(check: Callable[[], Any], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - the state is in other processes
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def enqueue(http: aiohttp.ClientSession, r: RouterProc, session: str, text: str) -> str:
    async with http.post(r.url + "/outbox/api/sendText",
                         json={"session": session, "chatId": "1@c.us", "text": text}) as resp:
        assert resp.status == 202, await resp.text()
        body: dict[str, Any] = await resp.json()
        return str(body["id"])


async def states(http: aiohttp.ClientSession, r: RouterProc, ids: list[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for i in ids:
        async with http.get(r.url + f"/outbox/messages/{i}") as resp:
            c[(await resp.json())["state"]] += 1
    return c


def check_order(sent: list[dict[str, Any]]) -> None:
    by_session: dict[str, list[int]] = {}
    for m in sorted(sent, key=lambda m: m["ts"]):
        by_session.setdefault(m["session"], []).append(int(m["text"].split("-")[1]))
    for session, numbers in by_session.items():
        assert numbers == sorted(numbers), (session, numbers)


async def test_a_router_killed_mid_campaign_loses_nothing_and_sends_nothing_twice(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], redis_server: RedisServer,
) -> None:
    cfg = router_config(three_sims, extra=PACE + f"store: {{url: '{redis_server.url}', prefix: 'ob1:'}}\n")
    a, b = router_factory(cfg), router_factory(cfg)
    sessions = [f"c{i}" for i in range(4)]
    async with aiohttp.ClientSession() as http:
        for s in sessions:
            async with http.post(a.url + "/api/sessions", json={"name": s}) as resp:
                assert resp.status == 201
        ids = [await enqueue(http, a, s, f"{s}-{n}") for n in range(10) for s in sessions]

        async def some_sent() -> bool:
            return len(await sim_sent(http, three_sims)) >= 8

        await poll(some_sent, 20, "the campaign under way")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)

        async def all_ended() -> bool:
            c = await states(http, b, ids)
            return c["sent"] + c["unknown"] + c["failed"] == len(ids)

        # The killed router's sessions are taken over once their leases lapse (10 s).
        await poll(all_ended, 60, "every message sent (or unknown) through the other router")
        final = await states(http, b, ids)
        sent = await sim_sent(http, three_sims)
    texts = Counter(m["text"] for m in sent)
    assert max(texts.values()) == 1, [t for t, n in texts.items() if n > 1]  # nothing twice
    assert final["failed"] == 0 and final["unknown"] <= 1  # at most the one in flight at the kill
    assert len(sent) == final["sent"] + final["unknown"] or len(sent) == final["sent"]
    assert final["sent"] >= len(ids) - 1
    check_order(sent)
    print(f"\nrouter SIGKILLed mid-campaign: {dict(final)}; {len(sent)} sent, none twice")


async def test_a_lost_answer_is_unknown_and_the_queue_goes_on(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc],
) -> None:
    r = router_factory(router_config(three_sims, extra=PACE))
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/api/sessions", json={"name": "d"}) as resp:
            assert resp.status == 201
            where = resp.headers["X-Router-Instance"]
        sim = next(s for s in three_sims if s.name == where)
        async with http.post(sim.url + "/sim/faults", json={"sendText": {"drop_after_send": 1}}) as resp:
            assert resp.status == 200
        ids = [await enqueue(http, r, "d", f"d-{n}") for n in range(3)]

        async def done() -> bool:
            c = await states(http, r, ids)
            return c["sent"] + c["unknown"] == 3

        await poll(done, 20, "the three messages ended")
        await asyncio.sleep(1.0)  # a window in which a wrong resend would show
        sent = [m["text"] for m in await sim_sent(http, three_sims)]
        final = await states(http, r, ids)
    assert sent == ["d-0", "d-1", "d-2"]  # d-0 once, although its answer was lost
    assert final == Counter({"sent": 2, "unknown": 1})


async def test_an_instance_killed_mid_campaign_its_queues_wait_and_resume(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
) -> None:
    sims = [sim_factory(f"node-{i}", "--start-delay", "0.3") for i in (1, 2, 3)]
    r = router_factory(router_config(sims, extra=PACE))
    sessions = [f"k{i}" for i in range(6)]
    async with aiohttp.ClientSession() as http:
        placed: dict[str, str] = {}
        for s in sessions:
            async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
                assert resp.status == 201
                placed[s] = resp.headers["X-Router-Instance"]

        async def working() -> bool:
            n = 0
            for sim in sims:
                async with http.get(sim.url + "/api/sessions") as resp:
                    n += sum(1 for x in await resp.json() if x["status"] == "WORKING")
            return n == len(sessions)

        await poll(working, 10, "sessions WORKING")
        victim = next(sim for sim in sims if list(placed.values()).count(sim.name) >= 1)
        ids = [await enqueue(http, r, s, f"{s}-{n}") for n in range(6) for s in sessions]

        async def some() -> bool:
            return len(await sim_sent(http, sims)) >= 6

        await poll(some, 20, "sending under way")
        before = {m["text"] for m in await sim_sent(http, [victim])}
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(5)

        async def ended() -> bool:
            c = await states(http, r, ids)
            return c["sent"] + c["unknown"] + c["failed"] == len(ids)

        await poll(ended, 60, "every message ended after the failover")
        final = await states(http, r, ids)
        after = await sim_sent(http, [s for s in sims if s is not victim])
    texts = Counter([m["text"] for m in after] + list(before))
    assert max(texts.values()) == 1  # nothing twice, across the failover
    assert final["failed"] == 0 and final["unknown"] <= 1  # the send in flight at the kill
    assert final["sent"] + final["unknown"] == len(ids)
    check_order(after)
    print(f"\ninstance SIGKILLed mid-campaign: {dict(final)}")


GAPS = """
outbox:
  delay: {min: 300ms, max: 500ms}
  limits: {per_minute: 0, per_hour: 0, per_day: 0}
"""


def gaps(sent: list[dict[str, Any]], session: str) -> list[float]:
    ts = sorted(m["ts"] / 1000 for m in sent if m["session"] == session)
    return [b - a for a, b in itertools.pairwise(ts)]


async def test_two_routers_serve_each_session_in_order_and_at_its_pace(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], redis_server: RedisServer,
) -> None:
    cfg = router_config(three_sims, extra=GAPS + f"store: {{url: '{redis_server.url}', prefix: 'ob2:'}}\n")
    routers = [router_factory(cfg), router_factory(cfg)]
    sessions = [f"f{i}" for i in range(4)]
    async with aiohttp.ClientSession() as http:
        for s in sessions:
            async with http.post(routers[0].url + "/api/sessions", json={"name": s}) as resp:
                assert resp.status == 201
        ids = []
        for n in range(8):  # enqueued alternately through both routers
            for i, s in enumerate(sessions):
                ids.append(await enqueue(http, routers[(n + i) % 2], s, f"{s}-{n}"))

        async def ended() -> bool:
            return (await states(http, routers[1], ids))["sent"] == len(ids)

        await poll(ended, 60, "every message sent")
        sent = await sim_sent(http, three_sims)
    assert Counter(m["text"] for m in sent).most_common(1)[0][1] == 1
    check_order(sent)
    for s in sessions:
        g = gaps(sent, s)
        # One router at a time per session (a lease): the pacing gap holds fleet-wide.
        assert min(g) >= 0.3 - 0.02, (s, g)
    print(f"\ntwo routers, {len(ids)} messages: order kept, gaps {min(min(gaps(sent, s)) for s in sessions):.3f}s"
          f" to {max(max(gaps(sent, s)) for s in sessions):.3f}s")


async def test_a_long_queue_does_not_delay_another_session(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc],
) -> None:
    r = router_factory(router_config(three_sims, extra=GAPS))
    async with aiohttp.ClientSession() as http:
        for s in ("busy", "quiet"):
            async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
                assert resp.status == 201
        for n in range(200):
            await enqueue(http, r, "busy", f"busy-{n}")

        async def started() -> bool:
            return len(await sim_sent(http, three_sims)) >= 3

        await poll(started, 10, "the long queue under way")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        quiet = await enqueue(http, r, "quiet", "quiet-0")

        async def out() -> bool:
            return (await states(http, r, [quiet]))["sent"] == 1

        await poll(out, 5, "the quiet session's message")
        took = loop.time() - t0
    assert took <= 0.5 + 0.3, took  # at most one pacing gap, not behind 200 messages
    print(f"\nquiet session's message sent {took * 1000:.0f} ms after it was queued behind 200")


async def test_workers_share_one_outbox_through_redis(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], redis_server: RedisServer,
) -> None:
    """``listen.workers: 2``: two processes behind one port, one Redis outbox; every message
    once, each session's order and gap kept."""
    cfg = router_config(three_sims, extra=GAPS + f"store: {{url: '{redis_server.url}', prefix: 'ob3:'}}\n")
    cfg = cfg.replace("listen: {host: 127.0.0.1, port: {port}}", "listen: {host: 127.0.0.1, port: {port}, workers: 2}")
    r = router_factory(cfg)
    sessions = [f"w{i}" for i in range(3)]
    async with aiohttp.ClientSession() as http:
        for s in sessions:
            async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
                assert resp.status == 201
        ids = []
        for n in range(6):
            for s in sessions:
                # A new connection each time: the kernel spreads them over both workers.
                async with aiohttp.ClientSession() as fresh:
                    ids.append(await enqueue(fresh, r, s, f"{s}-{n}"))

        async def ended() -> bool:
            return (await states(http, r, ids))["sent"] == len(ids)

        await poll(ended, 60, "every message sent")
        sent = await sim_sent(http, three_sims)
    assert Counter(m["text"] for m in sent).most_common(1)[0][1] == 1
    check_order(sent)
    for s in sessions:
        assert min(gaps(sent, s)) >= 0.3 - 0.02, (s, gaps(sent, s))
