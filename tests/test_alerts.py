"""Alerts: the pure policy (what alerts, dedup, rate limit) and, end to end, a real router
posting to a real receiver when a simulator is killed or webhooks are dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from router.alerts import AlertPolicy, BacklogWatch
from router.events import Event
from tests.procs import Proc, RouterProc, free_port, router_config

# -- the policy, without a loop -----------------------------------------------------------


def ev(kind: str, instance: str | None = None, **data: object) -> Event:
    return Event(kind, f"{kind} happened", instance=instance, severity="critical", data=dict(data))


def test_only_notable_events_alert_and_payload_is_slack_compatible() -> None:
    p = AlertPolicy()
    assert p.on_event(ev("session_moved", "n1"), 0) == []
    assert p.on_event(ev("config_reloaded"), 0) == []
    [a] = p.on_event(ev("instance_down", "n1"), 0)
    assert a.payload() == {"text": "wa-router CRITICAL: instance down [n1]: instance_down happened",
                           "event": "instance_down", "instance": "n1", "severity": "critical"}


def test_dedup_per_instance_and_rearm_by_the_opposite() -> None:
    p = AlertPolicy(dedup_window=300)
    assert len(p.on_event(ev("instance_down", "n1"), 0)) == 1
    assert p.on_event(ev("instance_down", "n1"), 10) == []  # same outage, said already
    assert len(p.on_event(ev("instance_down", "n2"), 10)) == 1  # another instance
    assert len(p.on_event(ev("instance_up", "n1"), 20)) == 1
    assert len(p.on_event(ev("instance_down", "n1"), 30)) == 1  # a new outage: re-armed
    assert len(p.on_event(ev("instance_down", "n3"), 400)) == 1
    assert len(p.on_event(ev("webhook_dead", target="http://a"), 0)) == 1
    assert p.on_event(ev("webhook_dead", target="http://a"), 5) == []
    assert len(p.on_event(ev("webhook_dead", target="http://b"), 5)) == 1


def test_rate_limit_then_one_summary() -> None:
    p = AlertPolicy(window=60, max_per_window=3)
    sent = [a for i in range(20) for a in p.on_event(ev("instance_down", f"n{i}"), 1.0)]
    assert len(sent) == 3
    assert p.tick(30.0) == []
    [summary] = p.tick(61.5)
    assert summary.event == "alerts_suppressed" and "17 more" in summary.text
    assert p.tick(200.0) == []


def test_backlog_watch_fires_once_and_rearms_below_half() -> None:
    w = BacklogWatch(1000)
    assert [w.check(n) for n in (10, 1001, 5000, 900, 499, 600, 1200)] == [
        None, True, None, None, False, None, True]


# -- end to end -----------------------------------------------------------------------------


@dataclass
class Receiver:
    port: int
    messages: list[dict[str, object]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.messages.append(await request.json())
        self.got.set()
        return web.Response(status=200)

    def kinds(self) -> Counter[str]:
        return Counter(str(m["event"]) for m in self.messages)

    async def wait(self, kind: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.kinds()[kind] == 0:
            assert loop.time() < deadline, f"no {kind} alert; got {self.kinds()}"
            self.got.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.got.wait(), deadline - loop.time())


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rcv = Receiver(free_port())
    app = web.Application()
    app.router.add_post("/alert/{secret}", rcv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rcv.port).start()
    yield rcv
    await runner.cleanup()


@pytest.mark.timeout(120)
async def test_a_killed_instance_alerts_once_down_and_once_failover_finished(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc], receiver: Receiver,
) -> None:
    sims = [sim_factory(f"node-{i}", "--start-delay", "0.2") for i in (1, 2, 3)]
    secret_url = f"http://127.0.0.1:{receiver.port}/alert/T0KEN-s3cret"
    r = router_factory(router_config(sims, (
        "health: {interval: 200ms, timeout: 200ms}\n"
        "failover: {grace: 1s}\n"
        f"alerts: {{webhooks: ['{secret_url}']}}\n"
    )))
    async with aiohttp.ClientSession() as http:
        for i in range(30):
            async with http.post(r.url + "/api/sessions", json={"name": f"a{i}"}) as resp:
                assert resp.status == 201
        # Traffic while it dies: passive failures and active probes both see it.
        victim = sims[1]
        victim.stop(signal.SIGKILL)
        for i in range(30):
            async with http.get(f"{r.url}/api/sessions/a{i}") as resp:
                assert resp.status == 200
    await receiver.wait("failover_finished", 60)
    kinds = receiver.kinds()
    assert kinds["instance_down"] == 1, receiver.messages
    assert kinds["failover_started"] == 1 and kinds["failover_finished"] == 1, receiver.messages
    down = next(m for m in receiver.messages if m["event"] == "instance_down")
    assert down["instance"] == "node-2" and down["severity"] == "critical"
    assert "node-2" in str(down["text"])
    assert "T0KEN-s3cret" not in r.output()
    # Back up: one "up".
    sim_factory("node-2", "--start-delay", "0.2", port=victim.port)
    await receiver.wait("instance_up", 30)
    assert receiver.kinds()["instance_up"] == 1 and receiver.kinds()["instance_down"] == 1
    print(f"\nkill + restart -> alerts {dict(receiver.kinds())}")


@pytest.mark.timeout(120)
async def test_1000_dead_letters_make_a_few_messages(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc], receiver: Receiver,
) -> None:
    target_port = free_port()
    gone = web.Application()
    gone.router.add_post("/hook", _not_found)
    runner = web.AppRunner(gone, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", target_port).start()
    try:
        r = router_factory(router_config([sim_factory("n1")], (
            f"webhooks: {{targets: [{{url: 'http://127.0.0.1:{target_port}/hook'}}]}}\n"
            f"alerts: {{webhooks: ['http://127.0.0.1:{receiver.port}/alert/x']}}\n"
        )))
        async with aiohttp.ClientSession() as http:
            sem = asyncio.Semaphore(32)

            async def post(i: int) -> None:
                body = json.dumps({"id": f"e{i}", "event": "message", "session": f"s{i % 20}",
                                   "payload": {}}).encode()
                async with sem, http.post(r.url + "/webhooks", data=body,
                                          headers={"Content-Type": "application/json"}) as resp:
                    assert resp.status == 200

            await asyncio.wait_for(asyncio.gather(*(post(i) for i in range(1000))), 60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await _dead(http, r) < 1000:
                assert loop.time() < deadline, "not all dead-lettered"
                await asyncio.sleep(0.1)
        await receiver.wait("webhook_dead", 10)
        assert 1 <= receiver.kinds()["webhook_dead"] <= 3, receiver.messages
        assert len(receiver.messages) <= 5, receiver.messages
        print(f"\n1,000 dead letters -> {len(receiver.messages)} alert message(s): {dict(receiver.kinds())}")
    finally:
        await runner.cleanup()


async def _not_found(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=404)


async def _dead(http: aiohttp.ClientSession, r: RouterProc) -> float:
    async with http.get(r.admin_url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("router_webhooks_dead_total "):
                return float(line.split()[1])
    return 0.0
