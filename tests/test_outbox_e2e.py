"""The outbox through a real router process, with real sims (and redis-server): the sims'
/sim/sent is the ground truth of what was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.procs import Proc, RouterProc, router_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.system

KEY = "outbox-client-key"
FAST = """
outbox:
  delay: {min: 100ms, max: 200ms}
  retries: {policy: constant, delay: 200ms, max_delay: 200ms, attempts: 3, jitter: 0}
"""


async def sent_by(sims: list[Proc], http: aiohttp.ClientSession, session: str) -> list[str]:
    out: list[str] = []
    for s in sims:
        async with http.get(s.url + "/sim/sent", params={"session": session}) as r:
            out += [m["text"] for m in await r.json()]
    return out


async def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - state lives in other processes
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("with_redis", [False, True], ids=["memory", "redis"])
async def test_queued_sends_go_out_once_in_order(
    with_redis: bool, three_sims: list[Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer,
) -> None:
    store = f"store: {{url: '{redis_server.url}'}}\n" if with_redis else ""
    text = router_config(three_sims, extra=FAST + store).replace(
        "listen: {host: 127.0.0.1, port: {port}}", f"listen: {{host: 127.0.0.1, port: {{port}}, api_keys: ['{KEY}']}}")
    assert KEY in text
    r = router_factory(text)
    auth = {"X-Api-Key": KEY}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(r.url + "/api/sessions", json={"name": "camp"}) as resp:
            assert resp.status == 201
        ids = []
        for i in range(5):
            async with http.post(r.url + "/outbox/api/sendText",
                                 json={"session": "camp", "chatId": "1@c.us", "text": f"m{i}"}) as resp:
                assert resp.status == 202, await resp.text()
                body = await resp.json()
                assert body["state"] == "queued" and body["session"] == "camp"
                ids.append(body["id"])

        async def all_sent() -> bool:
            return len(await sent_by(three_sims, http, "camp")) >= 5

        await wait_for(all_sent)
        assert await sent_by(three_sims, http, "camp") == [f"m{i}" for i in range(5)]
        async with http.get(r.url + f"/outbox/messages/{ids[0]}") as resp:
            view = await resp.json()
        assert view["state"] == "sent" and view["response"]["status"] == 201 and view["attempts"] == 1
        # Bad input: clear JSON errors, nothing queued.
        async with http.get(r.url + "/outbox/api/sendText") as resp:
            assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
        async with http.get(r.url + "/outbox/messages/msg_unknown") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        async with http.post(r.url + "/outbox/campaigns", json={"name": "x", "messages": [
                {"path": "/api/sendText", "body": {"session": "camp"}}, {"body": {}}, {"path": 5}]}) as resp:
            err = await resp.json()
            assert resp.status == 400 and [p["index"] for p in err["problems"]] == [1, 2]
    async with aiohttp.ClientSession() as anon, \
            anon.post(r.url + "/outbox/api/sendText", json={"session": "camp", "chatId": "1@c.us"}) as resp:
        assert resp.status == 401
    await asyncio.sleep(0.5)  # a window for a wrong send to show: every one above was refused
    async with aiohttp.ClientSession() as http:
        assert len(await sent_by(three_sims, http, "camp")) == 5


async def test_a_large_campaign_body_is_read_whole(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc],
) -> None:
    """A campaign body far beyond the proxy's pre-buffer (it once paused reading for ever)."""
    r = router_factory(router_config(three_sims, extra="outbox: {max_batch: 10000}\n"))
    body = {"name": "big", "messages": [
        {"path": "/api/sendText", "body": {"session": f"big-{i % 50}", "chatId": "1@c.us", "text": "x" * 40}}
        for i in range(8000)]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
            http.post(r.url + "/outbox/campaigns", json=body) as resp:
        assert resp.status == 202 and (await resp.json())["queued"] == 8000
