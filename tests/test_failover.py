"""Issue 4, "Done when": failover with real processes killed with SIGKILL.

Real processes only: routers (``python -m router run``), simulated instances
(``python -m router sim``, restarted on the same port and state file where a test needs it)
and, for the multi-router tests, a ``redis-server``. Every wait is a bounded poll on an
observable condition (the router's admin API and log, the simulators' own lists and
``/sim/stats``); every load loop is bounded in count and time. Each test prints its
failover timeline (``pytest -s`` shows it).

Which failures are legitimate. A ``POST /api/sendText`` that was already written to the
instance when it was killed may have been executed there (the message may be sent), and it
is not idempotent: the router must not send it again, so it answers 502 ``upstream_error``.
Test 1 forces one such request (a sendText the sim holds, on a session made STARTING behind
the router's back) and checks it is answered 502 and never re-sent; sendTexts of the load
caught in flight the same way (started before the kill finished, answered after it) are
counted apart, at most one per client that was talking to the killed instance. Every other
request -- idempotent ones that were in flight, and everything sent after the kill -- must
succeed: requests that never reached an instance are re-sent, and requests for sessions that
are moving are held until the session is WORKING on its new instance.

Test 6 is a regression test beyond the issue's list: with Redis, a whole instance's sessions
moved at once must not overfill the survivors past ``max_sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.flavors import BOTH, WAHA, Flavor
from tests.procs import Proc, RouterProc, bounded, router_config
from tests.redis_server import RedisServer

RUNNING = frozenset({"STARTING", "WORKING"})
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)  # above every hold_timeout used here
# Fast checks. A killed process refuses connections at once, so detection does not wait for
# the probe timeout; 500 ms keeps busy survivors (2 CPUs, 5+ processes) from failing probes.
FAST_HEALTH = "health: {interval: 300ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2}"


# -- helpers ---------------------------------------------------------------------------------


def router_yaml(sims: list[Proc], *, failover: str, redis: RedisServer | None = None,
                prefix: str = "wa-router:", instance_extra: str = "") -> str:
    """A router config (``{port}``/``{admin_port}`` are filled by start_router)."""
    flavor = sims[0].flavor  # its profile, and the instances' key
    lines = [
        "listen: {host: 127.0.0.1, port: {port}, shutdown_timeout: 2s}",
        "admin: {host: 127.0.0.1, port: {admin_port}}",
        FAST_HEALTH,
        f"failover: {{{failover}}}",
        "log: {format: json}",
        *flavor.router_lines(),
    ]
    if redis is not None:
        lines.append(f"store: {{url: '{redis.url}', prefix: '{prefix}'}}")
    lines.append("instances:")
    lines += [f"  - {{name: {s.name}, url: '{s.url}'{flavor.instance_extra()}{instance_extra}}}"
              for s in sims]
    return "\n".join(lines) + "\n"




async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
               interval: float = 0.02) -> float:
    """Wait (bounded) until ``check()`` is true; returns the wall-clock time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return time.time()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def holds(value: bool) -> bool:
    """``poll(lambda: holds(<expression>), ...)`` for a condition that needs no I/O."""
    return value


async def get_json(http: aiohttp.ClientSession, url: str,
                   headers: dict[str, str] | None = None) -> Any:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5), headers=headers) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.json()


async def sim_sessions(http: aiohttp.ClientSession, sim: Proc) -> dict[str, str]:
    """What the instance itself runs, asked directly: session -> status (WAHA's words)."""
    return await sim.flavor.sessions(http, sim.url)


async def sim_calls(http: aiohttp.ClientSession, sim: Proc) -> dict[str, dict[str, int]]:
    """``/sim/stats`` per-session call counts (start, stop, create, delete, sendText...)."""
    stats = await get_json(http, f"{sim.url}/sim/stats", sim.flavor.headers)
    calls: dict[str, dict[str, int]] = stats["calls"]
    return calls


async def admin_sessions(http: aiohttp.ClientSession, r: RouterProc) -> dict[str, dict[str, Any]]:
    """``GET /admin/sessions``: session -> {"instance", "epoch", "state"}."""
    return {a["session"]: a for a in await get_json(http, f"{r.admin_url}/admin/sessions")}


async def instance_state(http: aiohttp.ClientSession, r: RouterProc, name: str) -> str:
    for i in await get_json(http, f"{r.admin_url}/admin/instances"):
        if i["name"] == name:
            state: str = i["state"]
            return state
    raise KeyError(name)


async def held_metric(http: aiohttp.ClientSession, r: RouterProc) -> float | None:
    """``router_held_requests`` from the admin /metrics, when the router exports it."""
    async with http.get(f"{r.admin_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        text = await resp.text()
    m = re.search(r"^router_held_requests(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _parse_ts(ts: Any) -> float:
    if isinstance(ts, int | float):
        return float(ts)
    return datetime.strptime(str(ts), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def log_events(r: RouterProc) -> list[tuple[float, str, str]]:
    """(wall-clock ts, kind, message) of every event in the router's JSON log, oldest first.
    Events are logged by the ``wa_router.events`` logger as ``"<kind>: <message>"``."""
    out = []
    for line in r.output().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("logger") == "wa_router.events":
            kind, _, message = str(rec.get("msg", "")).partition(": ")
            out.append((_parse_ts(rec["ts"]), kind, message))
    return out


async def events(http: aiohttp.ClientSession, r: RouterProc) -> list[tuple[float, str, str]]:
    """The router's events, oldest first: ``GET /admin/events`` when the router serves it
    (a JSON list of {"ts", "kind", "message"}), else its log. Works on a dead router too
    (the log is still there)."""
    if r.proc.poll() is None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            async with http.get(f"{r.admin_url}/admin/events?limit=1000",
                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    items = await resp.json()
                    if isinstance(items, list) and all("kind" in e and "ts" in e for e in items):
                        got = [(_parse_ts(e["ts"]), e["kind"], e.get("message", "")) for e in items]
                        return sorted(got, key=lambda e: e[0])
    return log_events(r)


async def first_event(http: aiohttp.ClientSession, r: RouterProc, kind: str,
                      after: float = 0.0, contains: str = "") -> float | None:
    for ts, k, msg in await events(http, r):
        if k == kind and ts >= after - 0.01 and contains in msg:
            return ts
    return None


def kill9(p: Proc) -> tuple[float, float]:
    """SIGKILL and reap: (time the signal was sent, time the process was gone)."""
    t0 = time.time()
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait(10)
    return t0, time.time()


async def create_sessions(http: aiohttp.ClientSession, routers: list[RouterProc],
                          sessions: list[str], flavor: Flavor = WAHA) -> None:
    """Create and start sessions through the routers (alternately), all answered 201."""

    async def create(i: int, s: str) -> None:
        status, text = await flavor.create(http, routers[i % len(routers)].url, s, CLIENT_TIMEOUT)
        assert status == 201, (s, status, text)

    await bounded(16, (create(i, s) for i, s in enumerate(sessions)), timeout=30)


async def wait_all_working(http: aiohttp.ClientSession, sims: list[Proc], sessions: Iterable[str],
                           timeout: float, what: str) -> float:
    """Until every session in ``sessions`` is WORKING on one of ``sims`` (asked directly)."""
    wanted = set(sessions)

    async def check() -> bool:
        working: set[str] = set()
        for sim in sims:
            working |= {s for s, st in (await sim_sessions(http, sim)).items() if st == "WORKING"}
        return wanted <= working

    return await poll(check, timeout, what, interval=0.05)


async def placement(http: aiohttp.ClientSession, sims: list[Proc]) -> dict[str, list[str]]:
    """Session -> sims it is WORKING on (asked directly)."""
    where: dict[str, list[str]] = {}
    for sim in sims:
        for s, st in (await sim_sessions(http, sim)).items():
            if st == "WORKING":
                where.setdefault(s, []).append(sim.name)
    return where


async def assert_single_copies(http: aiohttp.ClientSession, router: RouterProc,
                               alive: list[Proc], sessions: list[str]) -> None:
    """Every session is WORKING on exactly one live sim, the one the map names, settled."""
    where = await placement(http, alive)
    assigned = await admin_sessions(http, router)
    problems = []
    for s in sessions:
        on = where.get(s, [])
        a = assigned.get(s)
        if len(on) != 1 or a is None or a["instance"] != on[0] or a["state"] != "assigned":
            problems.append((s, on, a))
    assert not problems, f"{len(problems)} sessions not on exactly one sim: {problems[:5]}"


# -- load ------------------------------------------------------------------------------------


@dataclass
class Result:
    session: str
    op: str  # get | chats | send
    start: float  # wall clock
    end: float
    status: int  # -1: no HTTP answer
    error: str = ""
    instance: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (200, 201)

    @property
    def latency(self) -> float:
        return self.end - self.start


OPS = ("get", "chats", "send")


async def one_request(http: aiohttp.ClientSession, base: str, session: str, op: str,
                      flavor: Flavor = WAHA) -> Result:
    t0 = time.time()
    try:
        async with flavor.request(http, base, session, op, CLIENT_TIMEOUT) as resp:
            body = await resp.read()
            error = ""
            if resp.status >= 400:
                with contextlib.suppress(ValueError):
                    error = str(json.loads(body).get("error", ""))
                error = error or body[:200].decode(errors="replace")
            return Result(session, op, t0, time.time(), resp.status, error,
                          resp.headers.get("X-Router-Instance", ""))
    except (aiohttp.ClientError, TimeoutError) as e:
        return Result(session, op, t0, time.time(), -1, repr(e))


@dataclass
class Load:
    """Clients looping over their own list of sessions (GET session, GET chats, POST
    sendText in turn), paced, until stopped; bounded in requests and time."""

    http: aiohttp.ClientSession
    lanes: list[tuple[str, list[str]]]  # (router base url, sessions) per client
    pace: float = 0.01
    ops: tuple[str, ...] = OPS
    max_requests: int = 20000  # per client
    flavor: Flavor = WAHA
    results: list[Result] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for n, (base, sessions) in enumerate(self.lanes):
            self._tasks.append(asyncio.create_task(self._client(n, base, sessions)))

    async def _client(self, n: int, base: str, sessions: list[str]) -> None:
        for i in range(self.max_requests):
            if self._stop.is_set():
                return
            s = sessions[(i + n) % len(sessions)]
            op = self.ops[(i + i // len(sessions)) % len(self.ops)]
            self.results.append(await one_request(self.http, base, s, op, self.flavor))
            await asyncio.sleep(self.pace)

    async def stop(self, timeout: float = 35) -> list[Result]:
        self._stop.set()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self._tasks)
        return self.results


def describe(results: list[Result]) -> str:
    by = Counter((r.op, r.status, r.error) for r in results)
    return ", ".join(f"{op} {st} {err or ''}: {n}".strip() for (op, st, err), n in sorted(by.items()))


# -- 1. 3 sims, 150 sessions, steady load: kill -9 one ------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("flavor", BOTH, ids=str)
async def test_kill9_one_of_three_under_load(
    flavor: Flavor, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    sims = [sim_factory(f"node-{i}", "--start-delay", "1", flavor=flavor) for i in (1, 2, 3)]
    router = router_factory(router_yaml(
        sims, failover="grace: 1s, hold_timeout: 20s, restore_concurrency: 8"))
    sessions = [f"s{i:03d}" for i in range(150)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        await create_sessions(http, [router], sessions, flavor)
        await wait_all_working(http, sims, sessions, 20, "150 sessions WORKING")
        before = await admin_sessions(http, router)
        assert {a["instance"] for a in before.values()} == {s.name for s in sims}
        victim = max(sims, key=lambda p: sum(a["instance"] == p.name for a in before.values()))
        survivors = [p for p in sims if p is not victim]
        moved = sorted(s for s, a in before.items() if a["instance"] == victim.name)
        stay = sorted(s for s, a in before.items() if a["instance"] != victim.name)

        # 4 clients on the survivors' sessions, 4 on the victim's: survivor traffic keeps
        # flowing while victim clients are held. One victim session is kept out of the load
        # for a sendText that is surely in flight at the kill.
        probe = moved[0]
        lanes = [(router.url, stay[k::4]) for k in range(4)] + [(router.url, moved[1:][k::4]) for k in range(4)]
        load = Load(http, lanes, flavor=flavor)
        load.start()
        await poll(lambda: holds(len(load.results) > 200), 10, "load warm-up")

        held_max: float | None = None

        async def sample_held() -> None:
            nonlocal held_max
            while True:
                v = await held_metric(http, router)
                if v is None:
                    return
                held_max = max(held_max or 0.0, v)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample_held())
        # Made STARTING behind the router's back, the sim holds a sendText up to --send-wait
        # (5 s): that POST is in the victim's hands when it dies.
        async with http.post(f"{victim.url}/sim/sessions/{probe}/status", json={"status": "STARTING"},
                             headers=flavor.headers) as r:
            assert r.status == 200
        probe_task = asyncio.create_task(one_request(http, router.url, probe, "send", flavor))

        async def probe_in_flight() -> bool:
            return (await sim_calls(http, victim)).get(probe, {}).get("sendText", 0) == 1

        await poll(probe_in_flight, 5, "a sendText in flight on the victim")
        t_kill, t_gone = kill9(victim)
        t_down = await poll(lambda: _state_is_not(http, router, victim.name, "healthy"), 5,
                            "router marks the killed sim down")

        async def all_settled() -> bool:
            now = await admin_sessions(http, router)
            return all(now[s]["instance"] != victim.name and now[s]["state"] == "assigned" for s in moved)

        t_working = await wait_all_working(http, survivors, moved, 40, "moved sessions WORKING on survivors")
        t_settled = await poll(all_settled, 20, "moved sessions settled in the map")
        # A little more traffic after the release, then stop.
        n_after = len(load.results)
        await poll(lambda: holds(len(load.results) > n_after + 100), 10, "traffic after release")
        results = await load.stop()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

        probe_result = await probe_task
        await assert_single_copies(http, router, survivors, sessions)
        after = await admin_sessions(http, router)
        assert all(after[s] == before[s] for s in stay), "a session on a survivor moved"
        assert all(after[s]["epoch"] > before[s]["epoch"] for s in moved)
        calls = {p.name: await sim_calls(http, p) for p in survivors}
        starts = Counter({s: sum(calls[p].get(s, {}).get("start", 0) for p in calls) for s in sessions})
        assert all(starts[s] == 1 for s in moved), {s: starts[s] for s in moved if starts[s] != 1}
        assert all(starts[s] == 0 for s in stay)
        # Never a call that drops the auth (WAHA DELETE, Evolution API logout or delete).
        assert not any(c.get("delete") or c.get("logout") for p in calls.values() for c in p.values())
        # The in-flight POST: answered 502, and never sent again (it may have run).
        assert (probe_result.status, probe_result.error) == (502, "upstream_error"), probe_result
        assert not any(calls[p].get(probe, {}).get("sendText") for p in calls)
        again = await one_request(http, router.url, probe, "send", flavor)  # the app's own retry
        assert again.status == 201 and again.instance == after[probe]["instance"], again

    moved_set = set(moved)
    stay_results = [r for r in results if r.session not in moved_set]
    moved_results = [r for r in results if r.session in moved_set]
    # A sendText already written to the victim when it died: may have run there, not idempotent.
    in_flight_posts = [r for r in moved_results if r.op == "send" and r.start <= t_gone
                       and r.end >= t_kill and r.status == 502 and r.error == "upstream_error"]
    moved_errors = [r for r in moved_results if not r.ok and r not in in_flight_posts]
    stay_errors = [r for r in stay_results if not r.ok]
    during = [r for r in stay_results if t_kill <= r.start <= t_settled]
    held = [r for r in moved_results if r.end > t_kill and r.latency > 0.25]
    first_release = min((r.end for r in held if r.ok), default=None)
    print(
        f"\n[{flavor} failover 150 sessions, 3 sims, start-delay 1s] killed {victim.name} ({len(moved)} sessions)"
        f"\n  detection (kill -> marked down):        {t_down - t_kill:.2f}s"
        f"\n  all moved sessions WORKING (sims):      {t_working - t_kill:.2f}s after the kill"
        f"\n  all moved sessions settled in the map:  {t_settled - t_kill:.2f}s after the kill"
        f"\n  first held request released:            "
        + (f"{first_release - t_kill:.2f}s after the kill" if first_release else "-")
        + f"\n  requests: {len(results)} total; survivors' sessions {len(stay_results)}"
        f" ({len(during)} during the failover), moved sessions {len(moved_results)}"
        f"\n  held (moved-session requests > 250 ms): {len(held)}, max latency "
        f"{max((r.latency for r in moved_results), default=0):.2f}s;"
        f" router_held_requests max: {held_max if held_max is not None else 'not exported'}"
        f"\n  errors: survivors {len(stay_errors)}, moved {len(moved_errors)}"
        f"\n  sendText in flight on the killed sim (502 upstream_error, not re-sent): 1 forced"
        f" ({probe_result.latency:.2f}s), {len(in_flight_posts)} caught by the load"
    )
    assert not stay_errors, describe(stay_errors)
    assert not moved_errors, describe(moved_errors)
    assert len(in_flight_posts) <= 4  # at most one in flight per client on the victim
    assert during, "no survivor traffic during the failover"
    assert held and all(r.ok for r in held)
    assert held_max is None or held_max >= 1
    assert t_down - t_kill <= 0.3 * 2 + 0.5


async def _state_is_not(http: aiohttp.ClientSession, r: RouterProc, name: str, state: str) -> bool:
    return await instance_state(http, r, name) != state


async def _state_is(http: aiohttp.ClientSession, r: RouterProc, name: str, state: str) -> bool:
    return await instance_state(http, r, name) == state


# -- 2. restarted within grace: keeps its sessions ----------------------------------------


@pytest.mark.timeout(60)
async def test_restart_within_grace_keeps_sessions(
    tmp_path: Path, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    def state(name: str) -> str:
        return str(tmp_path / f"{name}.state.json")

    sims = [sim_factory(f"node-{i}", "--start-delay", "1", "--state-file", state(f"node-{i}"))
            for i in (1, 2, 3)]
    grace = 5.0
    router = router_factory(router_yaml(sims, failover="grace: 5s, hold_timeout: 20s"))
    sessions = [f"g{i:02d}" for i in range(30)]
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, [router], sessions)
        await wait_all_working(http, sims, sessions, 15, "sessions WORKING")
        before = await admin_sessions(http, router)
        victim = sims[1]
        mine = sorted(s for s, a in before.items() if a["instance"] == victim.name)
        assert mine

        t_kill, _ = kill9(victim)
        t_down = await poll(lambda: _state_is_not(http, router, victim.name, "healthy"), 5,
                            "router marks the killed sim down")
        restarted = sim_factory(victim.name, "--start-delay", "1", "--state-file", state(victim.name),
                                port=victim.port)
        t_back = time.time()
        t_up = await poll(lambda: _state_is(http, router, victim.name, "healthy"), grace,
                          "router marks the restarted sim up")
        assert t_up - t_kill < grace
        await wait_all_working(http, [restarted], mine, 10, "its sessions WORKING again (state file)")

        # Watch the map until well past the grace period: nothing may move, ever.
        async def past_grace_and_unchanged() -> bool:
            now = await admin_sessions(http, router)
            assert now == before, "an assignment changed while the sim was back within grace"
            return time.time() > t_kill + grace + 1.5

        await poll(past_grace_and_unchanged, grace + 10, "grace period over", interval=0.1)

        # Requests for its sessions go to it again.
        for s in mine[:5]:
            r = await one_request(http, router.url, s, "send")
            assert r.ok and r.instance == victim.name, r
        calls = {p.name: await sim_calls(http, p) for p in [sims[0], restarted, sims[2]]}
        restores = {(p, s): c["start"] for p, pc in calls.items() for s, c in pc.items() if c.get("start")}
        assert not restores, f"restore calls made: {restores}"
        failovers = [e for e in await events(http, router) if e[1] == "failover_started"]
        assert not failovers, failovers
        await assert_single_copies(http, router, [sims[0], restarted, sims[2]], sessions)
    print(
        f"\n[restart within grace] {victim.name} ({len(mine)} sessions) killed; marked down after "
        f"{t_down - t_kill:.2f}s, restarted {t_back - t_kill:.2f}s, marked up {t_up - t_kill:.2f}s "
        f"after the kill (grace {grace:.0f}s): 0 moves, 0 restore calls"
    )


# -- 3. a returning sim's stale copies are stopped ----------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavor", BOTH, ids=str)
async def test_returning_sim_stale_copies_stopped(
    flavor: Flavor, tmp_path: Path, sim_factory: Callable[..., Proc],
    router_factory: Callable[..., RouterProc]
) -> None:
    """Rediscovery of an instance that comes back running sessions moved away meanwhile:
    stopped there (WAHA), or, with no stop call (Evolution API), left alone and alerted as
    ``stale_copy`` -- never logged out or deleted either way."""
    def state(name: str) -> str:
        return str(tmp_path / f"{name}.state.json")

    sims = [sim_factory(f"node-{i}", "--start-delay", "1", "--state-file", state(f"node-{i}"),
                        flavor=flavor) for i in (1, 2, 3)]
    router = router_factory(router_yaml(sims, failover="grace: 1s, hold_timeout: 20s, restore_concurrency: 8"))
    sessions = [f"r{i:02d}" for i in range(30)]
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, [router], sessions, flavor)
        await wait_all_working(http, sims, sessions, 15, "sessions WORKING")
        before = await admin_sessions(http, router)
        victim = sims[0]
        survivors = sims[1:]
        moved = sorted(s for s, a in before.items() if a["instance"] == victim.name)
        assert moved

        t_kill, _ = kill9(victim)
        await wait_all_working(http, survivors, moved, 30, "moved sessions WORKING on survivors")

        async def settled() -> bool:
            now = await admin_sessions(http, router)
            return all(now[s]["instance"] != victim.name and now[s]["state"] == "assigned" for s in moved)

        t_moved = await poll(settled, 10, "moves settled in the map")
        # Back with its state file: it starts its old sessions again (like WAHA after a
        # crash, and Evolution API, which connects every stored instance at boot).
        returned = sim_factory(victim.name, "--start-delay", "1", "--state-file", state(victim.name),
                               port=victim.port, flavor=flavor)
        t_back = time.time()
        boot = await sim_sessions(http, returned)
        assert set(moved) <= set(boot) and all(boot[s] in RUNNING for s in moved), boot

        async def stale_stopped() -> bool:
            listed = await sim_sessions(http, returned)
            return all(listed.get(s) == "STOPPED" for s in moved)

        async def stale_alerted() -> bool:
            return await first_event(http, router, "stale_copy", after=t_back) is not None

        if flavor.can_stop:
            t_stopped = await poll(stale_stopped, 15, "stale copies STOPPED on the returning sim")
        else:
            t_stopped = await poll(stale_alerted, 15, "stale_copy raised for the returning sim")
        await poll(lambda: _state_is(http, router, victim.name, "healthy"), 5, "returning sim up")
        # Stopped (or left), never deleted nor logged out: the session's auth stays in place.
        calls = await sim_calls(http, returned)
        if flavor.can_stop:
            assert all(calls.get(s, {}).get("stop", 0) >= 1 for s in moved), calls
        else:
            stale = [e for e in await events(http, router) if e[1] == "stale_copy"]
            assert len(stale) == 1 and all(s in stale[0][2] for s in moved[:10]), stale
            assert not any(c.get("stop") or c.get("restart") for c in calls.values()), calls
        assert not any(c.get("delete") or c.get("logout") for c in calls.values()), calls
        assert not any(c.get("start") for c in calls.values()), calls
        for p in survivors:
            assert not any(c.get("delete") or c.get("logout") for c in (await sim_calls(http, p)).values())
        listed = await sim_sessions(http, returned)
        assert set(moved) <= set(listed), "a stale copy was deleted"
        if flavor.can_stop:
            await assert_single_copies(http, router, [returned, *survivors], sessions)
            assert not [s for s, on in (await placement(http, [returned, *survivors])).items() if len(on) > 1]
        # Requests for moved sessions still go to their new home.
        for s in moved[:5]:
            r = await one_request(http, router.url, s, "send", flavor)
            assert r.ok and r.instance != victim.name, r
    print(
        f"\n[{flavor} returning sim] {victim.name} killed with {len(moved)} sessions; moved and "
        f"settled {t_moved - t_kill:.2f}s after the kill; restarted with its state file, its "
        f"{len(moved)} stale copies "
        + ("STOPPED" if flavor.can_stop else "alerted (stale_copy: no stop call)")
        + f" {t_stopped - t_back:.2f}s after its return (0 deletes, 0 logouts)"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavor", BOTH, ids=str)
async def test_a_new_router_adopts_what_the_instances_run(
    flavor: Flavor, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    """Rediscovery at start: sessions the instances already run (started behind any router)
    are adopted where they run; a stopped one is not (Evolution API's list shows database
    rows, so each running one is confirmed with connectionState)."""
    sims = [sim_factory(f"node-{i}", flavor=flavor) for i in (1, 2)]
    timeout = aiohttp.ClientTimeout(total=10)
    where = {"a1": sims[0], "a2": sims[0], "b1": sims[1]}
    async with aiohttp.ClientSession() as http:
        for s, sim in where.items():
            assert (await flavor.create(http, sim.url, s, timeout, direct=True))[0] == 201
        assert (await flavor.create(http, sims[1].url, "off", timeout, start=False, direct=True))[0] == 201
        router = router_factory(router_yaml(sims, failover="grace: 1s"))

        async def adopted() -> bool:
            return set(await admin_sessions(http, router)) >= set(where)

        await poll(adopted, 15, "the running sessions adopted")
        mapped = await admin_sessions(http, router)
        assert {s: a["instance"] for s, a in mapped.items()} == {s: p.name for s, p in where.items()}
        for s, sim in where.items():
            r = await one_request(http, router.url, s, "send", flavor)
            assert r.ok and r.instance == sim.name, r
        calls = {p.name: await sim_calls(http, p) for p in sims}
        # Adopted in place: nothing started, stopped or logged out to get there.
        assert not any(c.get(k) for p in calls.values() for c in p.values()
                       for k in ("start", "stop", "logout", "delete")), calls
    print(f"\n[{flavor} rediscovery] adopted {sorted(mapped)} where they run; 'off' (stopped) left out")


# -- 4. two routers on one Redis: each restore exactly once -------------------------------


@pytest.mark.timeout(60)
async def test_two_routers_restore_exactly_once(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer,
) -> None:
    sims = [sim_factory(f"node-{i}", "--start-delay", "1") for i in (1, 2, 3)]
    cfg = router_yaml(sims, redis=redis_server, prefix="fo4:",
                      failover="grace: 1s, hold_timeout: 20s, leader_ttl: 1s")
    routers = [router_factory(cfg), router_factory(cfg)]
    sessions = [f"m{i:02d}" for i in range(60)]
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, routers, sessions)
        await wait_all_working(http, sims, sessions, 15, "sessions WORKING")
        before = await admin_sessions(http, routers[0])
        assert before == await admin_sessions(http, routers[1])
        victim = sims[2]
        survivors = sims[:2]
        moved = sorted(s for s, a in before.items() if a["instance"] == victim.name)
        assert moved
        # Idempotent traffic through both routers, on every session.
        load = Load(http, [(routers[k % 2].url, sessions[k::4]) for k in range(4)], pace=0.02,
                    ops=("get", "chats"))
        load.start()

        t_kill, _ = kill9(victim)
        await wait_all_working(http, survivors, moved, 30, "moved sessions WORKING on survivors")

        async def settled_everywhere() -> bool:
            for r in routers:
                now = await admin_sessions(http, r)
                if not all(now[s]["instance"] != victim.name and now[s]["state"] == "assigned"
                           for s in moved):
                    return False
            return True

        t_settled = await poll(settled_everywhere, 15, "moves settled on both routers")
        results = await load.stop()
        assert await admin_sessions(http, routers[0]) == await admin_sessions(http, routers[1])
        calls = {p.name: await sim_calls(http, p) for p in survivors}
        starts = {s: sum(calls[p].get(s, {}).get("start", 0) for p in calls) for s in sessions}
        assert {s: n for s, n in starts.items() if s in moved and n != 1} == {}
        assert {s: n for s, n in starts.items() if s not in moved and n != 0} == {}
        await assert_single_copies(http, routers[1], survivors, sessions)
        leaders = [r for r in routers if await first_event(http, r, "leader") is not None]
        failover_runs = [r for r in routers if await first_event(http, r, "failover_started") is not None]
    errors = [r for r in results if not r.ok]
    print(
        f"\n[two routers, one Redis] {victim.name} killed with {len(moved)} sessions: restore called "
        f"exactly once each ({sum(starts.values())} start calls in total), settled on both routers "
        f"{t_settled - t_kill:.2f}s after the kill; {len(results)} GETs through both routers, "
        f"{len(errors)} errors"
    )
    assert len(leaders) == 1 and failover_runs == leaders
    assert not errors, describe(errors)


# -- 5. killing the leader router mid-failover --------------------------------------------


@pytest.mark.timeout(90)
async def test_leader_killed_mid_failover_other_router_finishes(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer,
) -> None:
    ttl = 1.0
    sims = [sim_factory(f"node-{i}", "--start-delay", "3") for i in (1, 2, 3)]
    cfg = router_yaml(sims, redis=redis_server, prefix="fo5:",
                      failover="grace: 1s, hold_timeout: 30s, leader_ttl: 1s, restore_concurrency: 4")
    routers = [router_factory(cfg), router_factory(cfg)]
    sessions = [f"k{i:02d}" for i in range(45)]
    async with aiohttp.ClientSession() as http:
        async def one_leader() -> bool:
            return sum([await first_event(http, r, "leader") is not None for r in routers]) == 1

        await poll(one_leader, 10, "one leader among the two routers")
        leader, other = routers if await first_event(http, routers[0], "leader") else routers[::-1]
        await create_sessions(http, routers, sessions)
        await wait_all_working(http, sims, sessions, 20, "sessions WORKING")
        before = await admin_sessions(http, other)
        victim = sims[0]
        survivors = sims[1:]
        moved = sorted(s for s, a in before.items() if a["instance"] == victim.name)
        assert len(moved) >= 8

        t_kill_sim, _ = kill9(victim)

        async def failover_started() -> bool:
            now = await admin_sessions(http, other)
            return any(now[s]["state"] == "moving" for s in moved)

        t_started = await poll(failover_started, 10, "failover started (sessions moving)")
        t_kill_leader, _ = kill9(leader)
        at_kill = await placement(http, survivors)
        unfinished = [s for s in moved if s not in at_kill]
        assert unfinished, "failover finished before the leader was killed: nothing to take over"

        async def took_over() -> bool:
            return await first_event(http, other, "leader", after=t_kill_leader) is not None

        await poll(took_over, 4 * ttl, "the other router becomes leader", interval=0.05)
        t_leader = await first_event(http, other, "leader", after=t_kill_leader)
        assert t_leader is not None
        # Requests through the surviving router for moved sessions: held, then answered.
        results = await bounded(16, (one_request(http, other.url, s, op)
                                     for s, op in itertools.product(moved, ("get", "send"))), timeout=40)
        t_working = await wait_all_working(http, survivors, moved, 30, "moved sessions WORKING")

        async def settled() -> bool:
            now = await admin_sessions(http, other)
            return all(now[s]["instance"] != victim.name and now[s]["state"] == "assigned" for s in moved)

        t_settled = await poll(settled, 15, "moves settled")
        await assert_single_copies(http, other, survivors, sessions)
        calls = {p.name: await sim_calls(http, p) for p in survivors}
        starts = {s: sum(calls[p].get(s, {}).get("start", 0) for p in calls) for s in moved}
    errors = [r for r in results if not r.ok]
    print(
        f"\n[leader killed mid-failover] {victim.name} killed with {len(moved)} sessions (start-delay 3s);"
        f" failover seen {t_started - t_kill_sim:.2f}s after; leader killed with {len(unfinished)}"
        f" sessions not yet WORKING; other router leader {t_leader - t_kill_leader:.2f}s after"
        f" (ttl {ttl:.0f}s); all WORKING {t_working - t_kill_leader:.2f}s, settled"
        f" {t_settled - t_kill_leader:.2f}s after the leader's death; {len(results)} requests"
        f" through the survivor, {len(errors)} errors; start calls per moved session:"
        f" {dict(Counter(starts.values()))}"
    )
    assert t_leader - t_kill_leader <= 2 * ttl
    assert not errors, describe(errors)


# -- 6. failover respects capacity (regression: concurrent moves read stale counts) -----


@pytest.mark.timeout(60)
async def test_failover_respects_max_sessions_with_redis(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer,
) -> None:
    """A whole instance's sessions are moved at once; with Redis each map write is a round
    trip, so target choices made concurrently all read the same counts. Survivors must still
    never exceed ``max_sessions``: what does not fit stays put and is reported."""
    cap = 25
    sims = [sim_factory(f"node-{i}") for i in (1, 2, 3)]
    router = router_factory(router_yaml(
        sims, redis=redis_server, prefix="fo6:", instance_extra=f", max_sessions: {cap}",
        failover="grace: 1s, hold_timeout: 5s, leader_ttl: 1s"))
    sessions = [f"c{i:02d}" for i in range(60)]
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, [router], sessions)
        await wait_all_working(http, sims, sessions, 15, "sessions WORKING")
        before = await admin_sessions(http, router)
        victim, survivors = sims[0], sims[1:]
        moved = sorted(s for s, a in before.items() if a["instance"] == victim.name)
        room = sum(cap - sum(a["instance"] == p.name for a in before.values()) for p in survivors)
        fits = min(room, len(moved))
        assert fits < len(moved)  # 60 sessions, 2 x 25 places left: some cannot move

        t_kill, _ = kill9(victim)

        async def done() -> bool:
            no_room = [e for e in await events(http, router)
                       if e[1] == "restore_failed" and e[0] >= t_kill and "no instance has room" in e[2]]
            now = await admin_sessions(http, router)
            gone = [s for s in moved if now[s]["instance"] != victim.name]
            return (len(no_room) >= len(moved) - fits and len(gone) >= fits
                    and all(a["state"] == "assigned" for a in now.values()))

        await poll(done, 20, "failover done (placed what fits, reported the rest)", interval=0.05)
        now = await admin_sessions(http, router)
        per_instance = Counter(a["instance"] for a in now.values())
        counts = {i["name"]: i["sessions"] for i in await get_json(http, f"{router.admin_url}/admin/instances")}
        placed = [s for s in moved if now[s]["instance"] != victim.name]
        where = await placement(http, survivors)
    print(f"\n[capacity] {victim.name} killed with {len(moved)} sessions, room for {fits} on the "
          f"survivors (max_sessions {cap}): placed {len(placed)}, final {dict(per_instance)}")
    assert all(per_instance[p.name] <= cap for p in survivors), per_instance
    assert all(counts[p.name] <= cap for p in survivors), counts
    assert len(placed) == fits
    assert all(len(where.get(s, [])) == 1 for s in sessions if now[s]["instance"] != victim.name)
    assert sum(len(v) for v in where.values()) <= cap * len(survivors)


@pytest.mark.timeout(60)
async def test_404_from_instance_restores_a_lost_session(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    """An instance restarted without its sessions (within grace): the first 404 for a
    session triggers reconciliation, which starts the session again where it is assigned."""
    sim = sim_factory("solo")
    r = router_factory(router_config(
        [sim],
        "health: {interval: 200ms, timeout: 500ms}\nfailover: {grace: 30s}\n",
    ))
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/api/sessions", json={"name": "lost1"}) as resp:
            assert resp.status == 201
        sim.stop(signal.SIGKILL)
        again = sim_factory("solo", port=sim.port)  # same port, empty: it lost the session
        deadline = asyncio.get_running_loop().time() + 20
        saw_404 = False
        while True:
            async with http.get(r.url + "/api/sessions/lost1") as resp:
                if resp.status == 404:
                    saw_404 = True
                elif resp.status == 200 and (await resp.json())["status"] == "WORKING":
                    break
            assert asyncio.get_running_loop().time() < deadline, "session never restored"
            await asyncio.sleep(0.1)
        assert saw_404
        async with http.get(again.url + "/sim/stats") as resp:
            stats = await resp.json()
        assert stats["calls"]["lost1"]["start"] == 1
        async with http.get(r.admin_url + "/admin/events", params={"kind": "session_lost"}) as resp:
            assert any(e["session"] == "lost1" for e in await resp.json())


# -- 8. a held request is not cut by limits.upstream_timeout --------------------------------


@pytest.mark.timeout(60)
async def test_a_held_request_outlives_upstream_timeout(
    tmp_path: Path, sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    """``upstream_timeout`` counts from the send: a request held while its instance is down
    waits up to ``hold_timeout`` (here 8 s, upstream_timeout 1 s) and is answered once the
    instance is back, not cut with 504 after a second."""
    state = str(tmp_path / "node-1.state.json")
    sim = sim_factory("node-1", "--state-file", state)
    router = router_factory(router_yaml([sim], failover="grace: 20s, hold_timeout: 8s")
                            + "limits: {upstream_timeout: 1s}\n")
    async with aiohttp.ClientSession() as http:
        await create_sessions(http, [router], ["h1"])
        await wait_all_working(http, [sim], ["h1"], 10, "h1 WORKING")
        t_kill, _ = kill9(sim)
        await poll(lambda: _state_is_not(http, router, "node-1", "healthy"), 5, "node-1 down")
        held = asyncio.create_task(one_request(http, router.url, "h1", "get"))
        await poll(lambda: holds(time.time() > t_kill + 2.5), 5, "held past upstream_timeout")
        assert not held.done(), held.result()
        sim_factory("node-1", "--state-file", state, port=sim.port)
        result = await held
    assert result.ok, result
    assert result.latency > 2.0, result
