"""The outbox through recoveries, with real processes: Redis SIGKILLed and restarted (same
port, same AOF) mid campaign, and an instance drained mid campaign. The sims' /sim/sent is
the ground truth: everything answered 202 goes out (at most the sends that overlapped the
outage end ``unknown``), nothing goes out twice, each session's order holds, and a drained
session's later messages go to its new instance."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.procs import Proc, RouterProc, router_config
from tests.redis_server import RedisServer
from tests.test_operate import AUTH, TOKEN
from tests.test_outbox_crash import check_order, poll, sim_sent

pytestmark = pytest.mark.system


class FsyncAlwaysRedis(RedisServer):
    """``appendfsync always``: every write Redis acknowledged is in the AOF before the
    answer, so a SIGKILL loses nothing the router was told is stored."""

    def args(self) -> list[str]:
        return [*super().args(), "--appendfsync", "always"]


def with_token(cfg: str) -> str:
    return cfg.replace("admin: {host: 127.0.0.1, port: {admin_port}}",
                       "admin: {host: 127.0.0.1, port: {admin_port}, token: " + TOKEN + "}")


async def place(http: aiohttp.ClientSession, r: RouterProc, sessions: list[str]) -> dict[str, str]:
    placed: dict[str, str] = {}
    for s in sessions:
        async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
            assert resp.status == 201, await resp.text()
            placed[s] = resp.headers["X-Router-Instance"]
    return placed


async def campaign(http: aiohttp.ClientSession, r: RouterProc, name: str, texts: list[str]) -> str:
    """Queue ``texts`` ("<session>-<n>") as one campaign; its id."""
    messages = [{"path": "/api/sendText",
                 "body": {"session": t.split("-")[0], "chatId": "1@c.us", "text": t}} for t in texts]
    async with http.post(r.url + "/outbox/campaigns", json={"name": name, "messages": messages}) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 202, body
        assert body["queued"] == len(texts), body
        return str(body["id"])


async def campaign_view(http: aiohttp.ClientSession, r: RouterProc, cid: str) -> dict[str, Any]:
    async with http.get(r.url + f"/outbox/campaigns/{cid}") as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status


def once_each(sent: list[dict[str, Any]]) -> Counter[str]:
    texts = Counter(m["text"] for m in sent)
    assert max(texts.values()) == 1, sorted(t for t, n in texts.items() if n > 1)  # nothing twice
    return texts


# -- Redis restarted mid campaign -----------------------------------------------------------

def paced(delay: str) -> str:
    """Config for a paced campaign with quick retries and failover."""
    return f"""
outbox:
  delay: {delay}
  limits: {{per_minute: 0, per_hour: 0, per_day: 0}}
  retries: {{policy: constant, delay: 300ms, max_delay: 300ms, attempts: 20, jitter: 0}}
failover: {{grace: 1s, leader_ttl: 1s}}
health: {{interval: 300ms, timeout: 300ms}}
"""


OUTAGE = paced("{min: 100ms, max: 200ms}")
SEND_TAKES = "300ms"  # each send held this long by the sims: sends are in flight at the kill
DOWN_FOR = 1.5


async def test_redis_killed_and_restarted_mid_campaign_loses_nothing_and_sends_nothing_twice(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], tmp_path: Path,
) -> None:
    redis = FsyncAlwaysRedis(tmp_path, name="outbox-redis").start()
    try:
        r = router_factory(router_config(
            three_sims, extra=OUTAGE + f"store: {{url: '{redis.url}', prefix: 'rr:'}}\n"))
        sessions = [f"q{i}" for i in range(4)]
        texts = [f"{s}-{n}" for n in range(10) for s in sessions]
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await place(http, r, sessions)
            for sim in three_sims:
                async with http.post(sim.url + "/sim/faults",
                                     json={"sendText": {"delay": SEND_TAKES}}) as resp:
                    assert resp.status == 200
            cid = await campaign(http, r, "through-an-outage", texts)

            async def in_flight() -> bool:
                if len(await sim_sent(http, three_sims)) < 8:
                    return False
                return int((await campaign_view(http, r, cid))["counts"].get("sending", 0)) >= 2

            await poll(in_flight, 20, "the campaign under way, sends in flight")
            redis.kill()  # SIGKILL: only what reached the AOF survives
            killed_at, t_kill = time.time(), loop.time()

            # Down for DOWN_FOR seconds: the router keeps serving; a send cannot be queued
            # (nothing answered 202 without being stored).
            refused: Counter[int] = Counter()
            outage_ids: list[tuple[str, str]] = []
            n = 0

            async def down_long_enough() -> bool:
                nonlocal n
                assert await status_of(http, r.url + "/healthz") == 200
                assert r.proc.poll() is None
                text = f"{sessions[n % len(sessions)]}-{100 + n}"
                async with http.post(r.url + "/outbox/api/sendText",
                                     json={"session": text.split("-")[0], "chatId": "1@c.us",
                                           "text": text}) as resp:
                    body = await resp.json()
                    if resp.status == 202:
                        outage_ids.append((text, str(body["id"])))
                    else:
                        refused[resp.status] += 1
                n += 1
                return loop.time() - t_kill >= DOWN_FOR

            await poll(down_long_enough, 10, "the outage")
            await asyncio.to_thread(redis.start)  # same port, same directory: the AOF reloads
            down, back_at = loop.time() - t_kill, time.time()

            async def ready() -> bool:
                return await status_of(http, r.url + "/readyz") == 200

            await poll(ready, 15, "/readyz 200 once Redis is back")
            after = []
            for s in sessions:  # queued after the restart, behind the campaign
                async with http.post(r.url + "/outbox/api/sendText",
                                     json={"session": s, "chatId": "1@c.us", "text": f"{s}-999"}) as resp:
                    body = await resp.json()
                    assert resp.status == 202, body
                    after.append(str(body["id"]))

            async def finished() -> bool:
                v = await campaign_view(http, r, cid)
                return v["state"] == "finished" and not v["counts"].get("queued") \
                    and not v["counts"].get("sending")

            await poll(finished, 40, "the campaign finished after the restart")
            view = await campaign_view(http, r, cid)
            ids = after + [i for _, i in outage_ids]

            async def others_sent() -> bool:
                for i in ids:
                    async with http.get(r.url + f"/outbox/messages/{i}") as resp:
                        if (await resp.json())["state"] != "sent":
                            return False
                return True

            await poll(others_sent, 20, "the messages queued during and after the outage sent")
            async with http.get(r.admin_url + "/admin/outbox") as resp:
                assert resp.status == 200
                totals: dict[str, int] = (await resp.json())["totals"]
            sent = await sim_sent(http, three_sims)
            assert await status_of(http, r.url + "/healthz") == 200
        assert r.proc.poll() is None, r.output()[-3000:]  # never crashed, never restarted
    finally:
        redis.kill()

    counts: dict[str, int] = view["counts"]
    delivered = once_each(sent)
    wanted = set(texts) | {f"{s}-999" for s in sessions} | {t for t, _ in outage_ids}
    assert set(delivered) <= wanted, set(delivered) - wanted  # nothing refused went out
    assert view["total"] == len(texts)
    # Every message ended: sent, or unknown (its send overlapped the outage: one per session at most).
    assert counts.get("sent", 0) + counts.get("unknown", 0) == len(texts), counts
    assert counts.get("unknown", 0) <= len(sessions), counts
    missing = set(texts) - set(delivered)
    assert len(missing) <= counts.get("unknown", 0), (sorted(missing), counts)  # none lost
    assert counts.get("sent", 0) <= len(set(texts) & set(delivered)), counts
    assert {f"{s}-999" for s in sessions} <= set(delivered)
    check_order(sent)
    # Sends in flight at the kill went out while Redis was down (the overlap this test is about).
    overlapped = [m for m in sent if killed_at * 1000 < m["ts"] < back_at * 1000]
    assert overlapped, "no send overlapped the outage"
    # The outbox's totals came through the restart (no write applied twice).
    extra = len(after) + len(outage_ids)
    assert totals["sent"] == counts.get("sent", 0) + extra, (totals, counts)
    assert totals["unknown"] == counts.get("unknown", 0), (totals, counts)
    assert totals["queued"] == totals["sending"] == totals["failed"] == 0, totals
    print(f"\nRedis down {down:.1f}s mid-campaign: {counts}; {len(overlapped)} sends overlapped it; "
          f"{len(delivered)} sent, none twice; enqueues during the outage: {dict(refused)} refused, "
          f"{len(outage_ids)} accepted")


# -- an instance drained mid campaign -------------------------------------------------------

DRAIN = paced("{min: 200ms, max: 300ms}")


async def test_an_instance_drained_mid_campaign_its_sessions_go_on_from_their_new_instance(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer,
) -> None:
    sims = [sim_factory(f"node-{i}", "--start-delay", "0.3") for i in (1, 2, 3)]
    by_name = {s.name: s for s in sims}
    r = router_factory(with_token(router_config(
        sims, extra=DRAIN + f"store: {{url: '{redis_server.url}', prefix: 'rd:'}}\n")))
    sessions = [f"d{i}" for i in range(6)]
    texts = [f"{s}-{n}" for n in range(12) for s in sessions]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as http:
        placed = await place(http, r, sessions)
        load = Counter(placed.values())
        victim_name = max(sorted(load), key=lambda name: load[name])  # the most sessions
        victim = by_name[victim_name]
        moved = sorted(s for s, where in placed.items() if where == victim_name)
        cid = await campaign(http, r, "through-a-drain", texts)

        async def under_way() -> bool:
            on_victim = await sim_sent(http, [victim])
            return all(any(m["session"] == s for m in on_victim) for s in moved)

        await poll(under_way, 20, "every session of the victim sent from it")
        async with http.post(r.admin_url + f"/admin/instances/{victim_name}/drain",
                             params={"wait": "30"}, headers=AUTH) as resp:
            drained = await resp.json()
            assert resp.status == 200, drained
        drained_at = time.time()
        assert drained["drained"] is True and drained["sessions"] == 0, drained
        before = [m for m in await sim_sent(http, [victim]) if m["session"] in moved]
        now_on: dict[str, str] = {}
        for s in moved:
            async with http.get(r.admin_url + f"/admin/sessions/{s}", headers=AUTH) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                now_on[s] = str(body["instance"])
        assert all(where != victim_name for where in now_on.values()), now_on
        mid = await campaign_view(http, r, cid)

        async def finished() -> bool:
            v = await campaign_view(http, r, cid)
            return v["state"] == "finished" and not v["counts"].get("queued") \
                and not v["counts"].get("sending")

        await poll(finished, 45, "the campaign finished")
        view = await campaign_view(http, r, cid)
        per_sim = {s.name: await sim_sent(http, [s]) for s in sims}
        assert await status_of(http, r.url + "/healthz") == 200
    assert r.proc.poll() is None, r.output()[-3000:]

    sent = [m for ms in per_sim.values() for m in ms]
    delivered = once_each(sent)
    assert set(delivered) == set(texts), set(texts) ^ set(delivered)  # every one, once
    assert view["counts"].get("sent") == len(texts), view
    check_order(sent)
    for s in moved:
        # The old instance got nothing of the session after the drain: its part is a
        # prefix of the session's messages, the new instance has all the rest.
        old = [m for m in per_sim[victim_name] if m["session"] == s]
        assert old == [m for m in before if m["session"] == s], (s, old, before)
        assert all(m["ts"] <= drained_at * 1000 for m in old), s
        new = [m for m in per_sim[now_on[s]] if m["session"] == s]
        assert new, f"{s}: nothing left to send after the drain"  # the test drained mid campaign
        numbers = [int(m["text"].split("-")[1]) for m in old] + [int(m["text"].split("-")[1]) for m in new]
        assert numbers == list(range(12)), (s, numbers)
        third = [x.name for x in sims if x.name not in (victim_name, now_on[s])]
        assert not any(m["session"] == s for m in per_sim[third[0]]), s  # only old, then new
    print(f"\n{victim_name} drained mid-campaign ({len(moved)} sessions: "
          f"{ {s: now_on[s] for s in moved} }); at the drain {mid['counts']}; "
          f"end {view['counts']}; {len(sent)} sent, none twice")
