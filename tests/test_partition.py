"""Issue 18: no session ever live twice, with real network partitions.

Each test builds its own world: a network namespace (``tests/netns.py``) holding sim
``node-a`` and its agent, joined to the root namespace by a veth pair; in the root
namespace the router, ``redis-server`` (listening on loopback and on the veth's root side,
for agent A), sim ``node-b`` and its agent. A sampler next to each sim (inside the
namespace for node-a, so that a partition does not blind it) records which sessions each
sim runs every 100 ms; ``tests.sampler.double_live`` turns those samples into the seconds
during which some session was WORKING on both sims, which must be 0 with agents. A paced
load (4 clients, GET session / GET chats / POST sendText in turn, 50 ms apart) runs through
the router during every case; each test prints its figures (``pytest -s``).

Partitions are cut on the namespace's side: its end of the veth set down (everything cut:
sim and agent lose the router and Redis), or an nftables rule inside the namespace dropping
what arrives for the sim's port (only the router -> instance path cut: the agent still
reaches Redis). Skipped, with the reason, where namespaces cannot be made (not root).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests import netns, sampler
from tests.procs import ROOT, Proc, RouterProc, free_port, start_router, start_sim, wait_http
from tests.redis_server import RedisServer
from tests.test_failover import (
    FAST_HEALTH,
    Load,
    Result,
    admin_sessions,
    create_sessions,
    describe,
    first_event,
    holds,
    instance_state,
    poll,
    sim_calls,
    sim_sessions,
    wait_all_working,
)

WHY_NOT = netns.unavailable()
pytestmark = [pytest.mark.system,
              pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

RENEW, FENCE_AFTER = 0.5, 1.5
GRACE = 3.0  # check-config's floor: fence_after + renew + 1s
PREFIX = "wa-router:"
SESSIONS = [f"p{i:02d}" for i in range(16)]
PY = sys.executable


class BoundRedis(RedisServer):
    """redis-server on loopback and on ``also`` (the veth's root side, for agent A)."""

    def __init__(self, directory: Path, also: str) -> None:
        super().__init__(directory)
        self.also = also

    def args(self) -> list[str]:
        a = super().args()
        a[a.index("--bind") + 1] = f"127.0.0.1 {self.also}"
        return [*a, "--protected-mode", "no"]


@dataclass
class NsProc(Proc):
    """A process inside the namespace, reached from the root namespace at ``host``."""

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class World:
    tmp: Path
    ns: netns.Netns
    redis: BoundRedis
    a: NsProc
    b: Proc
    router: RouterProc
    http: aiohttp.ClientSession
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    samplers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    on_a: list[str] = field(default_factory=list)  # sessions node-a ran at the start
    load: Load | None = None

    # -- agents ---------------------------------------------------------------------------

    def agent_config(self, name: str) -> Path:
        inside = name == "node-a"
        port = self.a.port if inside else self.b.port
        redis_host = self.ns.host_ip if inside else "127.0.0.1"
        path = self.tmp / f"agent-{name}.yaml"
        path.write_text(
            f"agent: {{instance: {name}, url: 'http://127.0.0.1:{port}', renew: {RENEW}s, "
            f"fence_after: {FENCE_AFTER}s}}\n"
            f"store: {{url: 'redis://{redis_host}:{self.redis.port}/0', prefix: '{PREFIX}'}}\n"
            "log: {level: INFO}\n")
        return path

    def start_agent(self, name: str) -> None:
        argv = [PY, "-m", "router", "agent", "-c", str(self.agent_config(name))]
        log = self.tmp / f"agent-{name}.log"
        if name == "node-a":
            self.agents[name] = self.ns.popen(argv, log, ROOT)
        else:
            self.agents[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log.open("ab"),
                                                 stderr=subprocess.STDOUT)

    def kill_agent(self, name: str) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    async def agent_up(self, name: str) -> float | None:
        async with self.http.get(f"{self.router.admin_url}/metrics") as r:
            text = await r.text()
        m = re.search(rf'^router_instance_agent_up\{{instance="{name}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else None

    # -- observation ----------------------------------------------------------------------

    def start_samplers(self, seconds: float = 120) -> None:
        a_out, b_out = self.tmp / "samples-a.jsonl", self.tmp / "samples-b.jsonl"
        self.samplers.append(self.ns.popen(
            [PY, "-m", "tests.sampler", "--out", str(a_out), "--seconds", str(seconds),
             f"node-a=http://127.0.0.1:{self.a.port}"], self.tmp / "sampler-a.log", ROOT))
        self.samplers.append(subprocess.Popen(
            [PY, "-m", "tests.sampler", "--out", str(b_out), "--seconds", str(seconds),
             f"node-b={self.b.url}"], cwd=ROOT, stdout=(self.tmp / "sampler-b.log").open("ab"),
            stderr=subprocess.STDOUT))

    def stop_samplers(self, a_killed: bool = False) -> tuple[float, set[str]]:
        for p in self.samplers:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        samples = sampler.read([self.tmp / "samples-a.jsonl", self.tmp / "samples-b.jsonl"])
        assert {s[1] for s in samples} == {"node-a", "node-b"}, "a sampler recorded nothing"
        return sampler.double_live(samples, unanswered={"node-a": a_killed})

    async def sampled_after(self, t: float, samples: int = 3) -> None:
        """Until each sampler has recorded ``samples`` samples taken after ``t``."""

        def enough() -> bool:
            got = sampler.read([self.tmp / "samples-a.jsonl", self.tmp / "samples-b.jsonl"])
            return all(sum(1 for ts, sim, _ in got if sim == name and ts > t) >= samples
                       for name in ("node-a", "node-b"))

        await poll(lambda: holds(enough()), 5, "samples after healing", interval=0.05)

    def start_load(self) -> None:
        lanes = [(self.router.url, SESSIONS[k::4]) for k in range(4)]
        self.load = Load(self.http, lanes, pace=0.05, max_requests=4000)
        self.load.start()

    async def stop_load(self) -> list[Result]:
        assert self.load is not None
        return await self.load.stop()

    async def working_on_b(self, sessions: list[str]) -> bool:
        st = await sim_sessions(self.http, self.b)
        return all(st.get(s) == "WORKING" for s in sessions)


def router_yaml(a: NsProc, b: Proc, redis: RedisServer) -> str:
    return "\n".join([
        "listen: {host: 127.0.0.1, port: {port}, shutdown_timeout: 2s}",
        "admin: {host: 127.0.0.1, port: {admin_port}}",
        FAST_HEALTH,
        f"failover: {{grace: {GRACE}s, hold_timeout: 25s, restore_concurrency: 8}}",
        "limits: {upstream_timeout: 5s}",
        "log: {format: json}",
        f"store: {{url: '{redis.url}', prefix: '{PREFIX}'}}",
        "instances:",
        f"  - {{name: node-a, url: '{a.url}'}}",
        f"  - {{name: node-b, url: '{b.url}'}}",
    ]) + "\n"


@contextlib.asynccontextmanager
async def world(tmp: Path, *, agents: bool) -> AsyncIterator[World]:
    ns = netns.Netns("a")
    started: list[Proc] = []
    redis: BoundRedis | None = None
    w: World | None = None
    try:
        ns.create()
        redis = BoundRedis(tmp, ns.host_ip)
        redis.start()
        pa = free_port()
        a_proc = ns.popen([PY, "-m", "router", "sim", "--host", "0.0.0.0", "--port", str(pa),
                           "--name", "node-a", "--start-delay", "0.2"], tmp / "sim-a.log", ROOT)
        a = NsProc(a_proc, pa, "node-a", tmp / "sim-a.log", host=ns.ns_ip)
        wait_http(a.url + "/ping", proc=a_proc)
        b = start_sim(tmp, "node-b", None, "--start-delay", "0.2")
        started.append(b)
        router = start_router(tmp, router_yaml(a, b, redis))
        started.append(router)
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(limit=64)) as http:
            w = World(tmp, ns, redis, a, b, router, http)
            if agents:
                w.start_agent("node-a")
                w.start_agent("node-b")
                await poll(lambda: _agents_up(w), 15, "both agents hold their lease")
            await create_sessions(http, [router], SESSIONS)
            await wait_all_working(http, [a, b], SESSIONS, 20, "every session WORKING")
            placed = await admin_sessions(http, router)
            w.on_a = sorted(s for s, p in placed.items() if p["instance"] == "node-a")
            assert w.on_a, "no session placed on node-a"
            w.start_samplers()
            w.start_load()
            await poll(lambda: holds(len(w.load.results) > 40 if w.load else False), 10,
                       "load warm-up")
            yield w
    finally:
        if w is not None:
            if w.load is not None and not w.load._stop.is_set():
                with contextlib.suppress(Exception):
                    await w.load.stop()
            for proc in [*w.agents.values(), *w.samplers]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        for p in reversed(started):
            p.stop()
        ns.destroy()
        if redis is not None:
            redis.kill()


async def _agents_up(w: World) -> bool:
    return await w.agent_up("node-a") == 1 and await w.agent_up("node-b") == 1


def report(case: str, *, double: float, who: set[str], cut: float | None = None,
           restored: float | None = None, results: list[Result], extra: str = "") -> None:
    failed = [r for r in results if not r.ok]
    restore = f"{restored - cut:.2f}s" if cut is not None and restored is not None else "-"
    print(f"\n[partition: {case}] double-live {double:.2f}s {sorted(who) or ''}; "
          f"restored {restore} after the cut; requests {len(results)}, failed {len(failed)}"
          + (f" ({describe(failed)})" if failed else "") + (f"; {extra}" if extra else ""))


def since(t: float | None, t0: float) -> str:
    return "-" if t is None else f"{t - t0:.2f}s"


def unexpected(results: list[Result], t_cut: float, t_down: float, on_a: list[str]
               ) -> list[Result]:
    """Failed requests beyond those the router cannot save: a sendText to node-a written
    between the cut and the moment the router saw node-a down (no answer came; it may
    have been sent, so it is not sent again: 502/504). Every GET must succeed (held, or
    sent again once the session moved), and nothing for node-b's sessions may fail."""
    moving = set(on_a)
    return [r for r in results if not r.ok and not (
        r.op == "send" and r.session in moving and r.start <= t_down and r.end >= t_cut)]


# -- the cases --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_router_path_cut_handoff_by_stop_order(tmp_path: Path) -> None:
    """Only router -> instance is cut: the agent, still renewing, executes the leader's
    stop order and acknowledges it; the sessions are restored elsewhere after the ack."""
    async with world(tmp_path, agents=True) as w:
        t_cut = time.time()
        w.ns.block_port(w.a.port)
        t_down = await poll(lambda: _not_healthy(w, "node-a"), 10, "router sees node-a down")
        t_restored = await poll(lambda: w.working_on_b(w.on_a), 30, "node-a's sessions on node-b")
        handoff = await first_event(w.http, w.router, "fence_handoff", after=t_cut)
        ordered = await first_event(w.http, w.router, "fence_ordered", after=t_cut)
        w.ns.unblock()
        await poll(lambda: _healthy(w, "node-a"), 15, "node-a healthy again")
        await w.sampled_after(time.time())  # both sims' state after healing, on record
        results = await w.stop_load()
        double, who = w.stop_samplers()
        calls_b = await sim_calls(w.http, w.b)
        a_now = await sim_sessions(w.http, w.a)
    report("router -> instance cut, agent reaches Redis", double=double, who=who, cut=t_cut,
           restored=t_restored, results=results,
           extra=f"stop order {since(ordered, t_cut)}, ack -> handoff {since(handoff, t_cut)} "
                 "after the cut")
    assert double == 0, who
    assert ordered is not None and handoff is not None
    assert all(calls_b.get(s, {}).get("start", 0) == 1 for s in w.on_a), calls_b
    assert not any(a_now.get(s) == "WORKING" for s in w.on_a), a_now
    assert not unexpected(results, t_cut, t_down, w.on_a), describe(
        unexpected(results, t_cut, t_down, w.on_a))


@pytest.mark.timeout(120)
async def test_whole_namespace_cut_self_fence_then_lapse(tmp_path: Path) -> None:
    """Instance and agent lose the router and Redis: the agent fences itself within
    fence_after; the router restores once the lease has lapsed long enough; on healing
    nothing is restored twice and node-a runs none of the moved sessions."""
    async with world(tmp_path, agents=True) as w:
        t_cut = time.time()
        w.ns.cut()
        t_down = await poll(lambda: _not_healthy(w, "node-a"), 10, "router sees node-a down")
        t_restored = await poll(lambda: w.working_on_b(w.on_a), 30, "node-a's sessions on node-b")
        lapsed = await first_event(w.http, w.router, "fence_lapsed", after=t_cut)
        w.ns.heal()
        await poll(lambda: _healthy(w, "node-a"), 15, "node-a healthy again")
        await poll(lambda: _agents_up(w), 15, "agent A holds its lease again")
        await w.sampled_after(time.time())
        results = await w.stop_load()
        double, who = w.stop_samplers()
        calls_a = await sim_calls(w.http, w.a)
        calls_b = await sim_calls(w.http, w.b)
        a_now = await sim_sessions(w.http, w.a)
        fence_log = (w.tmp / "agent-node-a.log").read_text()
    report("whole namespace cut (agent loses Redis)", double=double, who=who, cut=t_cut,
           restored=t_restored, results=results,
           extra=f"lease lapsed -> restore {since(lapsed, t_cut)} after the cut")
    assert double == 0, who
    assert lapsed is not None
    assert "self_fence" in fence_log
    assert all(calls_a.get(s, {}).get("stop", 0) >= 1 for s in w.on_a), calls_a
    assert all(calls_b.get(s, {}).get("start", 0) == 1 for s in w.on_a), calls_b
    assert not any(a_now.get(s) == "WORKING" for s in w.on_a), a_now
    assert not unexpected(results, t_cut, t_down, w.on_a), describe(
        unexpected(results, t_cut, t_down, w.on_a))


@pytest.mark.timeout(120)
async def test_partition_healed_before_grace_moves_nothing(tmp_path: Path) -> None:
    async with world(tmp_path, agents=True) as w:
        t_cut = time.time()
        w.ns.block_port(w.a.port)
        t_down = await poll(lambda: _not_healthy(w, "node-a"), 10, "router sees node-a down")
        await asyncio.sleep(max(0.0, t_cut + GRACE / 2 - time.time()))  # the partition lasts
        w.ns.unblock()
        t_healed = time.time()
        await poll(lambda: _healthy(w, "node-a"), 15, "node-a healthy again")
        # Past the grace and the fencing waits: still nothing moved.
        until = t_cut + GRACE + 2 * FENCE_AFTER + RENEW + 1.0
        await poll(lambda: holds(time.time() >= until), 20, "the grace and the fencing waits")
        results = await w.stop_load()
        double, who = w.stop_samplers()
        placed = await admin_sessions(w.http, w.router)
        calls_a = await sim_calls(w.http, w.a)
        calls_b = await sim_calls(w.http, w.b)
    report("healed before grace", double=double, who=who, results=results,
           extra=f"cut {t_healed - t_cut:.2f}s")
    assert double == 0, who
    assert all(placed[s]["instance"] == "node-a" for s in w.on_a)
    assert not any(c.get("stop") for c in calls_a.values()), calls_a
    assert not any(calls_b.get(s, {}).get("start") for s in w.on_a), calls_b
    assert not unexpected(results, t_cut, t_down, w.on_a), describe(
        unexpected(results, t_cut, t_down, w.on_a))


@pytest.mark.timeout(120)
async def test_agent_killed_instance_running(tmp_path: Path) -> None:
    """Agent A is SIGKILLed while node-a keeps running (and stays reachable): nothing moves
    or stops, the router shows the agent down once its lease expired. Then the router path
    is cut while the agent is still dead, and its supervisor restarts it a second later:
    the router does not move anything while the lease has not lapsed long enough, and the
    restarted agent's acknowledgement hands the sessions over."""
    async with world(tmp_path, agents=True) as w:
        t_kill = time.time()
        w.kill_agent("node-a")
        t_gone = await poll(lambda: _agent_is(w, "node-a", 0), 10, "router shows agent A down")
        until = t_kill + 2 * FENCE_AFTER + RENEW + 1.5
        await poll(lambda: holds(time.time() >= until), 20, "past the lapse and the margin")
        placed = await admin_sessions(w.http, w.router)
        assert all(placed[s]["instance"] == "node-a" for s in w.on_a)
        calls_a = await sim_calls(w.http, w.a)
        assert not any(c.get("stop") for c in calls_a.values()), calls_a

        t_cut = time.time()
        w.ns.block_port(w.a.port)
        t_down = await poll(lambda: _not_healthy(w, "node-a"), 10, "router sees node-a down")
        w.start_agent("node-a")  # restart: always
        t_restored = await poll(lambda: w.working_on_b(w.on_a), 30, "node-a's sessions on node-b")
        handoff = await first_event(w.http, w.router, "fence_handoff", after=t_cut)
        w.ns.unblock()
        await poll(lambda: _healthy(w, "node-a"), 15, "node-a healthy again")
        results = await w.stop_load()
        double, who = w.stop_samplers()
    report("agent SIGKILLed, then the router path cut and the agent restarted", double=double,
           who=who, cut=t_cut, restored=t_restored, results=results,
           extra=f"agent shown down {t_gone - t_kill:.2f}s after the kill; handoff "
                 f"{since(handoff, t_cut)} after the cut")
    assert double == 0, who
    assert handoff is not None
    assert t_gone - t_kill <= FENCE_AFTER + 1.5  # the lease's TTL, then the watch's period
    assert not unexpected(results, t_cut, t_down, w.on_a), describe(
        unexpected(results, t_cut, t_down, w.on_a))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("agents", [True, False], ids=["agent", "no-agent"])
async def test_instance_crash_fails_over_as_fast_as_without_agent(tmp_path: Path,
                                                                  agents: bool) -> None:
    async with world(tmp_path, agents=agents) as w:
        t_kill = time.time()
        w.a.proc.send_signal(signal.SIGKILL)
        w.a.proc.wait(10)
        t_down = await poll(lambda: _not_healthy(w, "node-a"), 10, "router sees node-a down")
        t_restored = await poll(lambda: w.working_on_b(w.on_a), 30, "node-a's sessions on node-b")
        handoff = await first_event(w.http, w.router, "fence_handoff", after=t_kill)
        results = await w.stop_load()
        double, who = w.stop_samplers(a_killed=True)
    report(f"instance SIGKILLed, {'agent alive' if agents else 'no agent'}", double=double,
           who=who, cut=t_kill, restored=t_restored, results=results)
    assert double == 0, who
    assert (handoff is not None) == agents
    assert not unexpected(results, t_kill, t_down, w.on_a), describe(
        unexpected(results, t_kill, t_down, w.on_a))
    # grace, then at most a few leader looks (the agent acks at once: connections refused)
    assert t_restored - t_kill <= GRACE + 4.0


@pytest.mark.timeout(120)
async def test_without_agents_a_partition_leaves_sessions_live_twice(tmp_path: Path) -> None:
    """The figure the router cannot prevent alone: the same whole-namespace cut without
    agents leaves node-a running its sessions while node-b runs them too, until the
    partition heals and the router stops the stale copies."""
    hold = 3.0  # seconds the cut lasts after the sessions were restored on node-b
    async with world(tmp_path, agents=False) as w:
        t_cut = time.time()
        w.ns.cut()
        t_restored = await poll(lambda: w.working_on_b(w.on_a), 30, "node-a's sessions on node-b")
        await poll(lambda: holds(time.time() >= t_restored + hold), 10, "the partition lasts")
        w.ns.heal()

        async def a_stopped() -> bool:
            st = await sim_sessions(w.http, w.a)
            return not any(st.get(s) == "WORKING" for s in w.on_a)

        t_clean = await poll(a_stopped, 20, "the router stops node-a's stale copies")
        await w.sampled_after(time.time())
        results = await w.stop_load()
        double, who = w.stop_samplers()
    report("whole namespace cut, no agents", double=double, who=who, cut=t_cut,
           restored=t_restored, results=results,
           extra=f"stale copies stopped {t_clean - t_cut:.2f}s after the cut "
                 f"(healed {hold:.0f}s after the restore)")
    assert double >= hold * 0.8, (double, who)  # both live from the restore to the clean-up


async def _healthy(w: World, name: str) -> bool:
    return await instance_state(w.http, w.router, name) == "healthy"


async def _not_healthy(w: World, name: str) -> bool:
    return await instance_state(w.http, w.router, name) != "healthy"


async def _agent_is(w: World, name: str, value: float) -> bool:
    return await w.agent_up(name) == value
