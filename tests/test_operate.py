"""Operating a live router (issue 6): hot reload, drain / undrain, rolling restart of the
instances, rebalance. Real router and simulator processes on loopback, steady client load
(``tests.load``), and the promise each time: 0 failed requests."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.flavors import BOTH, WAHA, Flavor
from tests.load import Load
from tests.procs import Proc, RouterProc, router_config
from tests.redis_server import RedisServer

TOKEN = "op-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config(sims: list[Proc], extra: str = "") -> str:
    return router_config(sims, extra).replace(
        "admin: {host: 127.0.0.1, port: {admin_port}}",
        "admin: {host: 127.0.0.1, port: {admin_port}, token: " + TOKEN + "}",
    )


def rewrite(r: RouterProc, sims: list[Proc], extra: str = "") -> None:
    """Write a new config for ``r`` (same ports) to its file."""
    text = config(sims, extra).replace("{port}", str(r.port)).replace("{admin_port}", str(r.admin_port))
    tmp = r.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, r.config_path)  # atomic, as an operator's deploy tool would


async def create_sessions(http: aiohttp.ClientSession, r: RouterProc, names: list[str],
                          flavor: Flavor = WAHA) -> None:
    for name in names:
        status, text = await flavor.create(http, r.url, name, aiohttp.ClientTimeout(total=30))
        assert status == 201, text
    await wait_for(lambda: all_working(http, r, names, flavor), 30, "sessions WORKING")


async def loaded(http: aiohttp.ClientSession, r: RouterProc, names: list[str], seconds: float) -> Load:
    """Sessions created, and a running load over them."""
    await create_sessions(http, r, names)
    load = Load(r.url, names, clients=8, max_seconds=seconds)
    load.start()
    await load.wait_requests(200)
    return load


async def all_working(http: aiohttp.ClientSession, r: RouterProc, names: list[str],
                      flavor: Flavor = WAHA) -> bool:
    for name in names:
        if not await flavor.working(http, r.url, name):
            return False
    return True


async def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def instances(http: aiohttp.ClientSession, r: RouterProc) -> dict[str, dict[str, object]]:
    async with http.get(r.admin_url + "/admin/instances", headers=AUTH) as resp:
        assert resp.status == 200
        return {i["name"]: i for i in await resp.json()}


async def reload_counts(http: aiohttp.ClientSession, r: RouterProc) -> dict[str, float]:
    async with http.get(r.admin_url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "router_config_reloads":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["result"]] = s.value
    return out


async def test_broken_config_is_refused_whole_and_the_old_one_keeps_routing(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(config(three_sims))
    good = r.config_path.read_text()
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, r, ["b1", "b2"])
        # Two problems in one file: both reported, nothing applied.
        r.config_path.write_text(good + "health: {interval: soon}\nbogus: 1\n")
        async with http.post(r.admin_url + "/admin/reload", headers=AUTH) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"] == "invalid_config"
        assert any(p.startswith("health.interval:") for p in body["problems"])
        assert any(p.startswith("bogus:") for p in body["problems"])
        # A valid file that changes what needs a restart: refused too, with the reason.
        r.config_path.write_text(good.replace(f"port: {r.port}", f"port: {r.port + 1}", 1))
        async with http.post(r.admin_url + "/admin/reload", headers=AUTH) as resp:
            assert resp.status == 400
            assert any("listen.port: cannot change on reload" in p for p in (await resp.json())["problems"])
        # SIGHUP with a broken file: logged, counted, the process keeps serving.
        r.config_path.write_text("instances: [")
        r.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: reload_counts(http, r), 10, "metrics")
        await wait_for(lambda: _errors_at_least(http, r, 3), 10, "the SIGHUP reload to be refused")
        assert r.proc.poll() is None
        for name in ("b1", "b2"):
            async with http.get(f"{r.url}/api/sessions/{name}") as resp:
                assert resp.status == 200
        # Unauthenticated reloads are refused before anything is read.
        async with http.post(r.admin_url + "/admin/reload") as resp:
            assert resp.status == 401
        r.config_path.write_text(good.replace("instances:", "limits: {upstream_timeout: 30s}\ninstances:"))
        async with http.post(r.admin_url + "/admin/reload", headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["changes"] == ["limits changed"]
        assert await reload_counts(http, r) == {"success": 1.0, "error": 3.0}
        async with http.get(r.admin_url + "/admin/events", params={"kind": "config_reload_failed"},
                            headers=AUTH) as resp:
            assert len(await resp.json()) == 3
    assert TOKEN not in r.output()


async def _errors_at_least(http: aiohttp.ClientSession, r: RouterProc, n: int) -> bool:
    return (await reload_counts(http, r)).get("error", 0) >= n


@pytest.mark.timeout(240)
async def test_20_reloads_under_load_adding_and_removing_an_instance(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    sims = [sim_factory(f"node-{i}") for i in (1, 2, 3)]
    extra_sim = sim_factory("node-4")
    r = router_factory(config(sims))
    names = [f"r{i:02d}" for i in range(30)]
    async with aiohttp.ClientSession() as http:
        load = await loaded(http, r, names, 200)
        fresh = 0
        for n in range(20):
            with_extra = n % 2 == 0
            rewrite(r, [*sims, extra_sim] if with_extra else sims,
                    f"limits: {{upstream_timeout: {30 + n}s}}\n")
            async with http.post(r.admin_url + "/admin/reload", headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
            if with_extra:
                # New sessions while node-4 is in: some land there, so removing it must
                # move them (drain first, then drop) without failing a request.
                await wait_for(lambda: _has(http, r, "node-4"), 10, "node-4 added")
                batch = [f"x{fresh + k:03d}" for k in range(6)]
                fresh += len(batch)
                await create_sessions(http, r, batch)
                load.sessions = [*load.sessions, *batch]
            else:
                await wait_for(lambda: _gone(http, r, "node-4"), 60, "node-4 drained and dropped")
            await load.wait_requests(50)
        await load.stop()
        print(f"\n20 reloads: {load.requests} requests, statuses {dict(load.statuses)}")
        assert load.failed() == [], load.failed()
        assert load.requests > 1000
        assert await reload_counts(http, r) == {"success": 20.0, "error": 0.0}
        async with http.get(r.admin_url + "/admin/sessions", headers=AUTH) as resp:
            placed = {a["session"]: a["instance"] for a in await resp.json()}
        assert set(placed) == set(load.sessions)
        assert "node-4" not in placed.values()
        async with http.get(r.admin_url + "/metrics") as resp:
            assert 'router_session_moves_total{reason="remove"}' in await resp.text()


async def _has(http: aiohttp.ClientSession, r: RouterProc, name: str) -> bool:
    return (await instances(http, r)).get(name, {}).get("state") == "healthy"


async def _gone(http: aiohttp.ClientSession, r: RouterProc, name: str) -> bool:
    return name not in await instances(http, r)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flavor", BOTH, ids=str)
async def test_drain_of_100_sessions_under_load_fails_nothing(
    flavor: Flavor, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    """WAHA: the drain moves every session (stopped there, not deleted). Evolution API (no
    stop call): the drain is a cordon; the operator then stops the instance and its sessions
    fail over. Either way no request fails and new sessions go elsewhere."""
    three_sims = [sim_factory(f"node-{i}", "--start-delay", "0.2", flavor=flavor) for i in (1, 2, 3)]
    r = router_factory(config(three_sims, "failover: {grace: 1s, restore_concurrency: 16}"))
    names = [f"d{i:03d}" for i in range(330)]
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, r, names, flavor)
        before = await instances(http, r)
        victim = max(before, key=lambda n: int(before[n]["sessions"]))  # type: ignore[call-overload]
        assert int(before[victim]["sessions"]) >= 100  # type: ignore[call-overload]
        sim = next(s for s in three_sims if s.name == victim)
        load = Load(r.url, names, clients=8, max_seconds=150, flavor=flavor)
        load.start()
        await load.wait_requests(200)
        t0 = asyncio.get_running_loop().time()
        wait = "120" if flavor.can_stop else "0"
        async with http.post(f"{r.admin_url}/admin/instances/{victim}/drain", params={"wait": wait},
                             headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            drained = await resp.json()
        if not flavor.can_stop:
            # A cordon: nothing moves while it runs (a second copy would fight the first).
            assert drained["sessions"] == before[victim]["sessions"], drained
            await load.wait_requests(200)
            assert (await instances(http, r))[victim]["sessions"] == before[victim]["sessions"]
            sim.stop()  # the operator's step: its sessions now fail over
            await wait_for(lambda: _holds_none(http, r, victim), 60, "the stopped instance's sessions moved")
            async with http.post(f"{r.admin_url}/admin/instances/{victim}/drain", headers=AUTH) as resp:
                drained = await resp.json()
            drained["state"] = "draining"  # it is down now; the flag is what matters
        print(f"\n[{flavor}] drain of {before[victim]['sessions']} sessions under load: "
              f"{asyncio.get_running_loop().time() - t0:.2f}s")
        assert drained == {"instance": victim, "state": "draining", "sessions": 0, "drained": True}
        await load.wait_requests(200)
        # New sessions go elsewhere while it is drained.
        await create_sessions(http, r, ["late1", "late2", "late3"], flavor)
        async with http.get(r.admin_url + "/admin/sessions", params={"instance": victim},
                            headers=AUTH) as resp:
            assert await resp.json() == []
        if not flavor.can_stop:
            sim = sim_factory(victim, "--start-delay", "0.2", port=sim.port, flavor=flavor)
            await wait_for(lambda: _state(http, r, victim, "draining"), 15, f"{victim} back, drained")
        async with http.post(f"{r.admin_url}/admin/instances/{victim}/undrain", headers=AUTH) as resp:
            assert resp.status == 200
            # A restarted instance may still sit out its passive ejection (connections it
            # refused while stopped) before it is healthy.
            assert (await resp.json())["state"] in (("healthy",) if flavor.can_stop else ("healthy", "ejected"))
        await wait_for(lambda: _state(http, r, victim, "healthy"), 30, f"{victim} healthy")
        await load.wait_requests(100)
        await load.stop()
        print(f"drain test: {load.requests} requests, statuses {dict(load.statuses)}")
        if flavor.can_stop:
            assert load.failed() == [], load.failed()
        else:
            # Stopping a server cuts what it was answering: a sendText written to it just
            # then gets 502 (it may have gone out; never sent twice), at most one per client.
            # Every other request succeeds.
            assert load.posts_in_flight <= load.clients, load.failed()
            assert len(load.failures) == load.statuses[502] == load.posts_in_flight, load.failed()
        listed = await flavor.sessions(http, sim.url)
        assert all(status == "STOPPED" for status in listed.values()), listed  # stopped, not deleted
        calls = await _sim_calls(http, sim)
        assert not any(c.get("delete") or c.get("logout") for c in calls.values()), calls
        async with http.post(f"{r.admin_url}/admin/instances/ghost/drain", headers=AUTH) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        async with http.post(f"{r.admin_url}/admin/instances/{victim}/drain", params={"wait": "x"},
                             headers=AUTH) as resp:
            assert resp.status == 400


async def _holds_none(http: aiohttp.ClientSession, r: RouterProc, name: str) -> bool:
    return (await instances(http, r))[name]["sessions"] == 0


async def _sim_calls(http: aiohttp.ClientSession, sim: Proc) -> dict[str, dict[str, int]]:
    async with http.get(sim.url + "/sim/stats", headers=sim.flavor.headers) as resp:
        calls: dict[str, dict[str, int]] = (await resp.json())["calls"]
    return calls


@pytest.mark.timeout(300)
async def test_rolling_restart_of_every_instance_through_drain_fails_nothing(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    sims = [sim_factory(f"node-{i}", "--start-delay", "0.3") for i in (1, 2, 3)]
    r = router_factory(config(sims))
    names = [f"k{i:02d}" for i in range(45)]
    async with aiohttp.ClientSession() as http:
        load = await loaded(http, r, names, 250)
        for i, sim in enumerate(list(sims)):
            # The procedure documented in the README: drain, restart, wait healthy, undrain.
            async with http.post(f"{r.admin_url}/admin/instances/{sim.name}/drain",
                                 params={"wait": "120"}, headers=AUTH) as resp:
                assert (await resp.json())["drained"] is True
            sim.stop()
            sims[i] = sim_factory(sim.name, "--start-delay", "0.3", port=sim.port)  # the new version
            await wait_for(functools.partial(_healthy_drained, http, r, sim.name), 30, f"{sim.name} back")
            async with http.post(f"{r.admin_url}/admin/instances/{sim.name}/undrain",
                                 headers=AUTH) as resp:
                assert resp.status == 200
            await load.wait_requests(100)
        # The last one restarted holds nothing: a rebalance spreads the sessions again.
        async with http.post(r.admin_url + "/admin/rebalance", params={"dry_run": "1"},
                             headers=AUTH) as resp:
            plan = await resp.json()
        assert plan["dry_run"] is True and plan["count"] > 0
        assert sims[-1].name in {m["to"] for m in plan["moves"]}  # the empty one gets sessions
        async with http.post(r.admin_url + "/admin/rebalance", headers=AUTH) as resp:
            started = await resp.json()
        assert started["dry_run"] is False and started["count"] == plan["count"]
        await wait_for(lambda: _events(http, r, "rebalance_finished"), 60, "the rebalance to finish")
        [finished] = await _events(http, r, "rebalance_finished")
        assert finished["data"] == {"moved": plan["count"], "planned": plan["count"]}, \
            await _events(http, r, None)
        async with http.post(r.admin_url + "/admin/rebalance", params={"dry_run": "1"},
                             headers=AUTH) as resp:
            again = await resp.json()
        # Converged: nothing more to move (sessions still moving from the last drain count
        # where they are going; they used to make a second plan move one more).
        assert again["count"] == 0, (plan, again, await instances(http, r))
        await load.wait_requests(100)
        await load.stop()
        print(f"\nrolling restart: {load.requests} requests, statuses {dict(load.statuses)}, "
              f"rebalance moved {plan['count']}")
        assert load.failed() == [], load.failed()
        assert set(load.by_instance) >= {s.name for s in sims}


async def _healthy_drained(http: aiohttp.ClientSession, r: RouterProc, name: str) -> bool:
    return (await instances(http, r))[name]["state"] == "draining" and await _probe_ok(http, r, name)


async def _probe_ok(http: aiohttp.ClientSession, r: RouterProc, name: str) -> bool:
    async with http.get(r.admin_url + "/metrics") as resp:
        return f'router_instance_up{{instance="{name}"}} 1.0' in await resp.text()


async def _events(http: aiohttp.ClientSession, r: RouterProc, kind: str | None) -> list[dict[str, object]]:
    params = {"kind": kind} if kind else {}
    async with http.get(r.admin_url + "/admin/events", params=params, headers=AUTH) as resp:
        events: list[dict[str, object]] = await resp.json()
        return events


async def _no_moves_left(http: aiohttp.ClientSession, r: RouterProc) -> bool:
    async with http.post(r.admin_url + "/admin/rebalance", params={"dry_run": "1"},
                         headers=AUTH) as resp:
        plan: dict[str, object] = await resp.json()
        return plan["count"] == 0


@pytest.mark.timeout(120)
async def test_a_drain_through_one_router_holds_on_every_router(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc], redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    store = f"store: {{url: 'redis://127.0.0.1:{redis_server.port}/0'}}\n"
    a = router_factory(config(three_sims, store))
    b = router_factory(config(three_sims, store))
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, a, [f"m{i}" for i in range(12)])
        async with http.post(f"{a.admin_url}/admin/instances/node-2/drain", params={"wait": "60"},
                             headers=AUTH) as resp:
            assert (await resp.json())["drained"] is True
        await wait_for(lambda: _state(http, b, "node-2", "draining"), 5, "router B to see the drain")
        # New sessions through B avoid node-2.
        for i in range(12):
            async with http.post(b.url + "/api/sessions", json={"name": f"n{i}"}) as resp:
                assert resp.status == 201 and resp.headers["X-Router-Instance"] != "node-2"
        async with http.post(f"{b.admin_url}/admin/instances/node-2/undrain", headers=AUTH) as resp:
            assert resp.status == 200
        await wait_for(lambda: _state(http, a, "node-2", "healthy"), 5, "router A to see the undrain")


async def _state(http: aiohttp.ClientSession, r: RouterProc, name: str, state: str) -> bool:
    return (await instances(http, r))[name]["state"] == state


async def test_json_logs_carry_the_request_id_and_no_secret(
    router_factory: Callable[..., RouterProc], tmp_path: Path
) -> None:
    """``log.format: json``: one JSON object per line; a request's lines carry its id."""
    from tests.procs import free_port

    dead = free_port()  # nothing listens there
    r = router_factory(
        "listen: {host: 127.0.0.1, port: {port}}\n"
        "admin: {host: 127.0.0.1, port: {admin_port}, token: " + TOKEN + "}\n"
        "log: {format: json}\nfailover: {hold_timeout: 1s}\n"
        f"instances: [{{name: gone, url: 'http://127.0.0.1:{dead}', api_key: inst-k3y-secret}}]\n"
    )
    async with aiohttp.ClientSession() as http, \
            http.get(r.url + "/api/sessions/j1", headers={"X-Request-Id": "req-json-1"}) as resp:
        assert resp.status >= 500
        assert resp.headers["X-Request-Id"] == "req-json-1"
    await wait_for(lambda: "req-json-1" in r.output(), 10, "the request's log line")
    lines = [ln for ln in r.output().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is JSON
    mine = [x for x in records if x.get("request_id") == "req-json-1"]
    assert mine and all({"ts", "level", "logger", "msg"} <= set(x) for x in mine)
    assert TOKEN not in r.output() and "inst-k3y-secret" not in r.output()
