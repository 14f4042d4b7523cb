"""Admin API: auth, instances, sessions, move. Real router and simulator processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from tests.flavors import BOTH, Flavor
from tests.procs import Proc, RouterProc, router_config

TOKEN = "adm-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _with_token(sims: list[Proc]) -> str:
    return router_config(sims).replace(
        "admin: {host: 127.0.0.1, port: {admin_port}}",
        "admin: {host: 127.0.0.1, port: {admin_port}, token: " + TOKEN + "}",
    )


async def test_token_required_and_constant_answers(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(_with_token(three_sims))
    async with aiohttp.ClientSession(base_url=r.admin_url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.get("/admin/instances", headers=headers) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert body["error"] == "unauthorized"
                assert TOKEN not in await resp.text()
        async with http.get("/admin/instances", headers=AUTH) as resp:
            assert resp.status == 200
            items = await resp.json()
        assert [i["name"] for i in items] == ["node-1", "node-2", "node-3"]
        assert set(items[0]) == {"name", "url", "state", "sessions", "weight", "max_sessions", "inflight"}
        assert all(i["state"] == "healthy" for i in items)
        for open_path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(open_path) as resp:
                assert resp.status == 200
    assert TOKEN not in r.output()


async def test_without_token_read_only_on_loopback(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    async with aiohttp.ClientSession(base_url=r.admin_url) as http:
        async with http.get("/admin/instances") as resp:
            assert resp.status == 200
        async with http.post("/admin/sessions/x/move", json={"instance": "node-1"}) as resp:
            assert resp.status == 401


@pytest.mark.parametrize("flavor", BOTH, ids=str)
async def test_sessions_and_move(
    flavor: Flavor, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    """A move holds, stops the old copy (never deletes it), restores on the target. With no
    stop call (Evolution API) a running session cannot move: 409, nothing changes; once its
    instance is down it can."""
    three_sims = [sim_factory(f"node-{i}", flavor=flavor) for i in (1, 2, 3)]
    r = router_factory(_with_token(three_sims))
    sims = {s.name: s for s in three_sims}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession() as http:
        for name in ("m1", "m2", "m3", "m4"):
            assert (await flavor.create(http, r.url, name, timeout))[0] == 201
        async with http.get(r.admin_url + "/admin/sessions", headers=AUTH) as resp:
            listed = await resp.json()
        assert [x["session"] for x in listed] == ["m1", "m2", "m3", "m4"]
        home = {x["session"]: x["instance"] for x in listed}
        async with http.get(r.admin_url + "/admin/sessions", params={"instance": home["m1"]},
                            headers=AUTH) as resp:
            assert "m1" in [x["session"] for x in await resp.json()]
        async with http.get(r.admin_url + "/admin/sessions/m1", headers=AUTH) as resp:
            one = await resp.json()
        assert one["instance"] == home["m1"] and one["epoch"] >= 1
        async with http.get(r.admin_url + "/admin/sessions/nope", headers=AUTH) as resp:
            assert resp.status == 404
        target = next(n for n in sims if n != home["m1"])
        async with http.post(r.admin_url + "/admin/sessions/m1/move", json={"instance": target},
                             headers=AUTH) as resp:
            if not flavor.can_stop:
                assert resp.status == 409, await resp.text()
                assert "failover.stop is none" in (await resp.json())["message"]
                async with http.get(r.admin_url + "/admin/sessions/m1", headers=AUTH) as again:
                    assert await again.json() == one  # nothing moved
                sims[home["m1"]].stop()  # down: now it may move
                await _until_down(http, r, home["m1"])
                async with http.post(r.admin_url + "/admin/sessions/m1/move",
                                     json={"instance": target}, headers=AUTH) as resp2:
                    assert resp2.status == 200, await resp2.text()
                    moved = await resp2.json()
            else:
                assert resp.status == 200, await resp.text()
                moved = await resp.json()
        assert moved["instance"] == target and moved["epoch"] > one["epoch"]
        assert await flavor.working(http, r.url, "m1")
        async with flavor.request(http, r.url, "m1", "get", timeout) as resp:
            assert resp.headers["X-Router-Instance"] == target
        if flavor.can_stop:
            listed_old = await flavor.sessions(http, sims[home["m1"]].url)
            assert listed_old["m1"] == "STOPPED"  # stopped, never deleted
        async with http.get(sims[target].url + "/sim/stats", headers=flavor.headers) as resp:
            calls = (await resp.json())["calls"]
        assert calls["m1"].get("start") == 1 and not calls["m1"].get("logout")
        for bad in ({"instance": "ghost"}, {"nope": 1}, "notjson"):
            kw = {"data": bad} if isinstance(bad, str) else {"json": bad}
            async with http.post(r.admin_url + "/admin/sessions/m2/move", headers=AUTH, **kw) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "bad_request"


async def _until_down(http: aiohttp.ClientSession, r: RouterProc, name: str) -> None:
    async with asyncio.timeout(15):
        while True:
            async with http.get(r.admin_url + "/admin/instances", headers=AUTH) as resp:
                states = {i["name"]: i["state"] for i in await resp.json()}
            if states[name] not in ("healthy", "draining"):
                return
            await asyncio.sleep(0.05)


async def test_overview_paging_and_the_dashboard_page(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(_with_token(three_sims))
    async with aiohttp.ClientSession() as http:
        for i in range(25):
            async with http.post(r.url + "/api/sessions", json={"name": f"p{i:02d}"}) as resp:
                assert resp.status == 201
        async with http.get(r.admin_url + "/admin/sessions", params={"limit": "10", "offset": "20"},
                            headers=AUTH) as resp:
            page = await resp.json()
            assert resp.headers["X-Total-Count"] == "25"
        assert [x["session"] for x in page] == ["p20", "p21", "p22", "p23", "p24"]
        async with http.get(r.admin_url + "/admin/sessions", params={"q": "p1"}, headers=AUTH) as resp:
            assert [x["session"] for x in await resp.json()] == [f"p1{i}" for i in range(10)]
        for bad in ({"limit": "0"}, {"offset": "-1"}, {"limit": "x"}):
            async with http.get(r.admin_url + "/admin/sessions", params=bad, headers=AUTH) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
        async with http.get(r.admin_url + "/admin/overview") as resp:
            assert resp.status == 401
        async with http.get(r.admin_url + "/admin/overview", headers=AUTH) as resp:
            o = await resp.json()
        assert o["router"]["sessions"] == 25 and o["router"]["leader"] is True
        assert [i["name"] for i in o["instances"]] == ["node-1", "node-2", "node-3"]
        assert sum(i["sessions"] for i in o["instances"]) == 25
        # Capacity: the bounded-loads cap, ceil(1.25 x 25 / 3) = 11.
        assert all(i["capacity"] == 11 for i in o["instances"])
        assert set(o["instances"][0]) >= {"state", "up", "rps", "error_rate", "p99_ms", "inflight"}
        # The page itself needs no token (a browser cannot send one for a page load) and
        # holds no data; it asks for the token and sends it on its API calls.
        async with http.get(r.admin_url + "/dashboard") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page_text = await resp.text()
        assert "/admin/overview" in page_text and TOKEN not in page_text


async def test_bad_admin_parameters_are_400_not_clamped(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    """Found by the schemathesis run: these used to be clamped or ignored silently."""
    r = router_factory(_with_token(three_sims) + "webhooks: {targets: [{url: 'http://127.0.0.1:9/h'}]}\n")
    async with aiohttp.ClientSession(base_url=r.admin_url, headers=AUTH) as http:
        for method, path, kw in (
            ("GET", "/admin/events?limit=1001", {}),
            ("GET", "/admin/events?limit=0", {}),
            ("GET", "/admin/webhooks/dead?limit=0", {}),
            ("POST", "/admin/rebalance?dry_run=AAA", {}),
            ("POST", "/admin/webhooks/dead/replay", {"json": {"ids": None}}),
            ("POST", "/admin/webhooks/dead/replay", {"json": [1, 2]}),
        ):
            async with http.request(method, path, **kw) as resp:
                assert resp.status == 400, (path, resp.status)
                assert (await resp.json())["error"] == "bad_request"
        async with http.request("TRACE", "/admin/instances") as resp:
            assert resp.status == 405 and "GET" in resp.headers["Allow"]
            assert (await resp.json())["error"] == "method_not_allowed"
