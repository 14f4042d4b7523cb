"""Webhook relay end to end: a real router process, real Redis, a real target on loopback.

Events are posted to the router's webhook path as an instance would; a target HTTP server
in the test records what the router delivers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from tests.procs import Proc, RouterProc, free_port, router_config
from tests.redis_server import RedisServer

TARGET_KEY = "target-hmac-key"
INBOUND_KEY = "inbound-hmac-key"


@dataclass
class Target:
    """A webhook receiver whose failures the test controls."""

    port: int = 0
    fail_first_ratio: float = 0.0
    down: bool = False
    status: int = 200
    seen: set[str] = field(default_factory=set)
    first: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    deliveries: int = 0
    duplicates: int = 0
    attempts_while_down: int = 0
    bad_signatures: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            self.attempts_while_down += 1
            return web.Response(status=503)
        if self.status != 200:
            return web.Response(status=self.status)
        expected = hmac.new(TARGET_KEY.encode(), body, hashlib.sha512).hexdigest()
        if request.headers.get("X-Webhook-Hmac") != expected:
            self.bad_signatures += 1
            return web.Response(status=400)
        eid = request.headers["X-Webhook-Request-Id"]
        if eid not in self.seen and self.rng.random() < self.fail_first_ratio:
            self.seen.add(eid)  # seen, but failed: its first *delivery* comes later
            return web.Response(status=500)
        self.deliveries += 1
        data = json.loads(body)
        if eid in self.first[data["session"]]:
            self.duplicates += 1
        else:
            self.first[data["session"]].append(eid)
        self.seen.add(eid)
        self.got.set()
        return web.Response(status=200)

    def delivered(self) -> int:
        return sum(len(v) for v in self.first.values())


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target(port=free_port())
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/hook", t.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", t.port).start()
    yield t
    await runner.cleanup()


def relay_config(sim: Proc, target: Target, redis: RedisServer | None, extra: str = "") -> str:
    store = f"store: {{url: 'redis://127.0.0.1:{redis.port}/0', prefix: 'wh:'}}\n" if redis else ""
    return router_config([sim], store + f"""webhooks:
  path: /webhooks
  inbound_hmac_key: {INBOUND_KEY}
  max_body: 64KiB
  targets:
    - {{url: 'http://127.0.0.1:{target.port}/hook', hmac_key: {TARGET_KEY}}}
  retries: {{policy: constant, delay: 100ms, max_delay: 1s, attempts: 200, jitter: 0.1}}
""" + extra)


def event_body(session: str, n: int, event: str = "message") -> bytes:
    return json.dumps({"id": f"evt_{session}_{n:05d}", "timestamp": n, "event": event,
                       "session": session, "payload": {"n": n}}).encode()


def signed(body: bytes, key: str = INBOUND_KEY) -> dict[str, str]:
    return {"Content-Type": "application/json",
            "X-Webhook-Hmac": hmac.new(key.encode(), body, hashlib.sha512).hexdigest(),
            "X-Webhook-Hmac-Algorithm": "sha512"}


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def post_all(url: str, sessions: list[str], per_session: int,
                   accepted: dict[str, list[str]], stop_after: int | None = None) -> None:
    """Each session posts its events in order (the next after the previous is answered),
    sessions in parallel. ``accepted`` records what the router answered 200 for."""
    async with aiohttp.ClientSession() as http:

        async def one(s: str) -> None:
            for n in range(per_session):
                body = event_body(s, n)
                try:
                    async with http.post(url, data=body, headers=signed(body)) as r:
                        if r.status == 200:
                            accepted[s].append(f"evt_{s}_{n:05d}")
                except aiohttp.ClientError:
                    return  # the router went away: later events were never accepted

        await asyncio.wait_for(asyncio.gather(*(one(s) for s in sessions)), 120)


@pytest.mark.timeout(150)
async def test_10000_events_delivered_in_order_through_failures(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer, target: Target,
) -> None:
    r = router_factory(relay_config(sim_factory("n1"), target, redis_server))
    target.fail_first_ratio = 0.3
    sessions = [f"s{i:02d}" for i in range(50)]
    accepted: dict[str, list[str]] = defaultdict(list)
    poster = asyncio.create_task(post_all(r.url + "/webhooks", sessions, 200, accepted))
    await wait_until(lambda: target.delivered() > 2000, 60, "first deliveries")
    target.down = True
    await asyncio.sleep(5)  # the 5 s outage the issue asks for
    down_attempts = target.attempts_while_down
    target.down = False
    await poster
    assert sum(len(v) for v in accepted.values()) == 10_000
    await wait_until(lambda: target.delivered() == 10_000, 90, "every event delivered")
    for s in sessions:
        assert target.first[s] == accepted[s], f"order broken for {s}"
    assert target.bad_signatures == 0
    # No spin while the target was down: attempts bounded by the backoff, not a hot loop.
    assert down_attempts < 2000, down_attempts
    print(f"duplicates: {target.duplicates}, attempts while down (5 s): {down_attempts}")
    async with aiohttp.ClientSession() as http, http.get(r.admin_url + "/metrics") as resp:
        text = await resp.text()
    delivered = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("router_webhooks_delivered_total"))
    assert delivered >= 10_000


@pytest.mark.timeout(120)
async def test_router_killed_mid_stream_loses_nothing_it_accepted(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer, target: Target,
) -> None:
    sim = sim_factory("n1")
    cfg = relay_config(sim, target, redis_server)
    r = router_factory(cfg)
    target.down = True  # nothing is delivered before the kill: all of it is at stake
    sessions = [f"k{i:02d}" for i in range(20)]
    accepted: dict[str, list[str]] = defaultdict(list)
    poster = asyncio.create_task(post_all(r.url + "/webhooks", sessions, 100, accepted))
    await wait_until(lambda: sum(len(v) for v in accepted.values()) > 500, 30, "events accepted")
    r.stop(signal.SIGKILL)
    await poster
    total = sum(len(v) for v in accepted.values())
    assert total >= 500
    target.down = False
    r2 = router_factory(cfg)  # a fresh process on the same Redis
    assert r2.proc.poll() is None
    await wait_until(lambda: all(set(accepted[s]) <= set(target.first[s]) for s in sessions),
                     60, "every accepted event delivered after restart")
    for s in sessions:
        assert target.first[s][: len(accepted[s])] == accepted[s]


@pytest.mark.timeout(60)
async def test_no_retry_status_goes_to_dead_list_and_replay_delivers(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer, target: Target,
) -> None:
    r = router_factory(relay_config(sim_factory("n1"), target, redis_server).replace(
        "admin: {host: 127.0.0.1, port: {admin_port}}",
        "admin: {host: 127.0.0.1, port: {admin_port}, token: tok}"))
    auth = {"Authorization": "Bearer tok"}
    target.status = 404
    body = event_body("dead1", 1)
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/webhooks", data=body, headers=signed(body)) as resp:
            assert resp.status == 200
        dead: list[dict[str, object]] = []

        async def poll_dead() -> bool:
            nonlocal dead
            async with http.get(r.admin_url + "/admin/webhooks/dead", headers=auth) as resp:
                dead = await resp.json()
            return bool(dead)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not await poll_dead():
            assert loop.time() < deadline
            await asyncio.sleep(0.1)
        assert dead[0]["last_status"] == 404 and dead[0]["session"] == "dead1"
        assert target.delivered() == 0
        target.status = 200
        async with http.post(r.admin_url + "/admin/webhooks/dead/replay", headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.json())["replayed"] == 1
        await wait_until(lambda: target.first["dead1"] == ["evt_dead1_00001"], 20, "replayed event")
        assert not await poll_dead()
        assert target.duplicates == 0


@pytest.mark.timeout(60)
async def test_bad_webhooks_are_refused_and_nothing_is_stored(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer, target: Target,
) -> None:
    r = router_factory(relay_config(sim_factory("n1"), target, redis_server))
    good = event_body("g1", 1)
    async with aiohttp.ClientSession() as http:
        cases = [
            (good, signed(good, "wrong-key"), 401),
            (good, {"Content-Type": "application/json"}, 401),
            (b"{not json", signed(b"{not json"), 400),
            (b"[1, 2]", signed(b"[1, 2]"), 400),
            (b"{" + b" " * (70 * 1024) + b"}", signed(b"{" + b" " * (70 * 1024) + b"}"), 413),
        ]
        for body, headers, status in cases:
            async with http.post(r.url + "/webhooks", data=body, headers=headers) as resp:
                assert resp.status == status, (body[:20], resp.status)
                err = await resp.json()
                assert err["error"] and INBOUND_KEY not in json.dumps(err)
        async with http.get(r.url + "/webhooks") as resp:
            assert resp.status == 405
        # One good event afterwards: the only thing the target ever sees.
        async with http.post(r.url + "/webhooks", data=good, headers=signed(good)) as resp:
            assert resp.status == 200
    await wait_until(lambda: target.delivered() == 1, 20, "the good event")
    await asyncio.sleep(0.3)
    assert target.deliveries == 1 and target.first == {"g1": ["evt_g1_00001"]}
    assert INBOUND_KEY not in r.output() and TARGET_KEY not in r.output()


@pytest.mark.timeout(150)
async def test_redis_down_answers_503_and_recovers(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer, target: Target,
) -> None:
    """Redis gone: the instance gets 503 store_unavailable (it retries; nothing was
    stored, so nothing is claimed to be); Redis back: accepted and delivered again."""
    r = router_factory(relay_config(sim_factory("n1"), target, redis_server))
    url = r.url + "/webhooks"
    async with aiohttp.ClientSession() as http:
        before = event_body("r1", 1)
        async with http.post(url, data=before, headers=signed(before)) as resp:
            assert resp.status == 200
        await wait_until(lambda: target.delivered() == 1, 20, "the first event")
        redis_server.kill()
        lost = event_body("r1", 2)
        async with http.post(url, data=lost, headers=signed(lost)) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "store_unavailable"
        redis_server.start()
        after = event_body("r1", 3)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:  # the router reconnects on its own; until then the answer stays 503
            async with http.post(url, data=after, headers=signed(after)) as resp:
                if resp.status == 200:
                    break
                assert resp.status == 503 and loop.time() < deadline
            await asyncio.sleep(0.1)
        async with http.get(r.url + "/healthz") as resp:
            assert resp.status == 200
    await wait_until(lambda: target.delivered() == 2, 30, "the event accepted after the restart")
    assert target.first == {"r1": ["evt_r1_00001", "evt_r1_00003"]}
