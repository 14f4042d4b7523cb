"""Outbox delivery tracking end to end, with real processes: sims post their WAHA webhooks
(``message.any``, ``message.ack``) to the router's webhook path, as real instances would.

- every message a campaign sent reaches ``delivery.ack == "read"`` from the sims' acks, and
  one never acked is listed in ``GET /admin/outbox`` ``unacked``;
- a message whose answer was lost (``unknown``) becomes ``sent`` from the sim's own
  ``message.any``, and is never sent again;
- a ban signal (429, or failed sends in a row) pauses that session's queue only, with one
  ``outbox_session_paused`` event, and a resume lets it go on.

The router's ``outbox.message`` events reach a receiver in the test (the ids of a
campaign's messages, and each message's states in order); the sims' ``/sim/sent`` is the
ground truth of what went out."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.lib.configs import router_yaml
from tests.procs import Proc, RouterProc, free_port
from tests.redis_server import RedisServer
from tests.test_operate import AUTH
from tests.test_outbox_crash import enqueue, poll, sim_sent
from tests.test_outbox_recovery import with_token

pytestmark = pytest.mark.system

PACE = """
outbox:
  delay: {min: 50ms, max: 100ms}
  limits: {per_minute: 0, per_hour: 0, per_day: 0}
  retries: {policy: constant, delay: 200ms, max_delay: 200ms, attempts: 20, jitter: 0}
  ack_timeout: 1s
health: {interval: 300ms, timeout: 300ms}
"""


@dataclass
class Hooks:
    """The test's webhook target: the router's ``outbox.message`` events."""

    port: int = 0
    states: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # id -> states
    by_ref: dict[str, str] = field(default_factory=dict)  # ref -> message id
    # X-Webhook-Request-Id -> the changes it named (the id names one change: a receiver
    # drops a second delivery of an id as a duplicate)
    changes: dict[str, list[tuple[str, str | None]]] = field(
        default_factory=lambda: defaultdict(list))
    acks: dict[str, set[str | None]] = field(default_factory=lambda: defaultdict(set))

    async def handle(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        if doc.get("event") == "outbox.message":
            view = doc["payload"]
            self.states[view["id"]].append(view["state"])
            ack = view["delivery"]["ack"] if view.get("delivery") else None
            self.acks[view["id"]].add(ack)
            self.changes[request.headers["X-Webhook-Request-Id"]].append((view["state"], ack))
            if view.get("ref"):
                self.by_ref[view["ref"]] = view["id"]
        return web.Response(status=200)

    def one_id_per_change(self) -> None:
        named = {mid: set(found) for mid, found in self.changes.items() if len(set(found)) > 1}
        assert not named, named  # one id, several changes: a receiver would drop all but one

    def target(self) -> str:
        return (f"webhooks:\n  targets:\n    - {{url: 'http://127.0.0.1:{self.port}/hook', "
                "events: ['outbox.message']}\n")


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks(port=free_port())
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", h.port).start()
    yield h
    await runner.cleanup()


async def fleet(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc], n: int,
    extra: str, *, webhooks: bool = True, token: bool = False,
) -> tuple[RouterProc, list[Proc]]:
    """``n`` sims posting their webhooks to a router over them (the sims' ports are chosen
    first, the router started, then the sims with its webhook URL); once all are healthy."""
    ports = {f"node-{i}": free_port() for i in range(1, n + 1)}
    cfg = router_yaml("{port}", "{admin_port}",
                      [(name, f"http://127.0.0.1:{p}") for name, p in ports.items()], extra=extra)
    r = router_factory(with_token(cfg) if token else cfg)
    hook = ("--webhook-url", r.url + "/webhooks") if webhooks else ()
    sims = [sim_factory(name, *hook, "--ack-delay", "0.1", port=p) for name, p in ports.items()]
    async with aiohttp.ClientSession() as http:
        async def healthy() -> bool:
            return all(i["state"] == "healthy" for i in await admin(http, r, "/admin/instances"))

        await poll(healthy, 10, "every sim healthy")
    return r, sims


async def place(http: aiohttp.ClientSession, r: RouterProc, sessions: list[str]) -> dict[str, str]:
    placed: dict[str, str] = {}
    for s in sessions:
        async with http.post(r.url + "/api/sessions", json={"name": s}) as resp:
            assert resp.status == 201, await resp.text()
            placed[s] = resp.headers["X-Router-Instance"]
    return placed


async def view(http: aiohttp.ClientSession, r: RouterProc, mid: str) -> dict[str, Any]:
    async with http.get(r.url + f"/outbox/messages/{mid}") as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def admin(http: aiohttp.ClientSession, r: RouterProc, path: str) -> Any:
    async with http.get(r.admin_url + path, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def texts(sent: list[dict[str, Any]], session: str | None = None) -> list[str]:
    return [m["text"] for m in sorted(sent, key=lambda m: m["ts"])
            if session is None or m["session"] == session]


# -- acks ------------------------------------------------------------------------------------


async def test_every_message_of_a_campaign_is_read(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
    redis_server: RedisServer, hooks: Hooks,
) -> None:
    store = f"store: {{url: '{redis_server.url}', prefix: 'dl1:'}}\n"
    r, sims = await fleet(sim_factory, router_factory, 3, PACE + hooks.target() + store)
    sessions = [f"rd{i}" for i in range(5)]
    refs = [f"{s}-{n}" for n in range(10) for s in sessions]
    async with aiohttp.ClientSession() as http:
        await place(http, r, sessions)
        messages = [{"path": "/api/sendText", "ref": ref,
                     "body": {"session": ref.split("-")[0], "chatId": "1@c.us", "text": ref}}
                    for ref in refs]
        async with http.post(r.url + "/outbox/campaigns", json={"name": "acks", "messages": messages}) as resp:
            assert resp.status == 202 and (await resp.json())["queued"] == len(refs)

        async def all_sent() -> bool:
            return len(hooks.by_ref) == len(refs) and all(
                "sent" in hooks.states[mid] for mid in hooks.by_ref.values())

        await poll(all_sent, 30, "every message sent (outbox.message events)")
        ids = [hooks.by_ref[ref] for ref in refs]

        async def all_read() -> bool:
            for mid in ids:
                delivery = (await view(http, r, mid))["delivery"]
                if delivery is None or delivery["ack"] != "read":
                    return False
            return True

        await poll(all_read, 15, "every message's delivery.ack read")
        views = [await view(http, r, mid) for mid in ids]
        overview = await admin(http, r, "/admin/outbox")
        sent = await sim_sent(http, sims)
    assert Counter(v["state"] for v in views) == Counter({"sent": len(refs)})
    assert all(v["delivery"]["at"] >= v["sent_at"] for v in views)
    assert Counter(texts(sent)) == Counter(refs)  # each once
    assert overview["unacked"]["count"] == 0, overview["unacked"]

    async def told() -> bool:  # the delivery changes reached the app too...
        return all("read" in hooks.acks[mid] for mid in ids)

    await poll(told, 10, "every read told to the webhook target")
    # ... each under its own event id (one id per change: none dropped as a duplicate)
    hooks.one_id_per_change()
    lag = sorted(v["delivery"]["at"] - v["sent_at"] for v in views)
    print(f"\n{len(refs)} messages read: ack lag {lag[0]:.2f}s to {lag[-1]:.2f}s")


async def test_a_message_never_acked_is_listed_unacked(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
) -> None:
    """The control: a sim that posts no webhooks, so no ack ever comes."""
    r, sims = await fleet(sim_factory, router_factory, 1, PACE, webhooks=False)
    async with aiohttp.ClientSession() as http:
        await place(http, r, ["mute"])
        mid = await enqueue(http, r, "mute", "mute-0")

        async def listed() -> bool:
            found = (await admin(http, r, "/admin/outbox"))["unacked"]
            return bool(found["count"] == 1 and found["oldest"] == [mid])

        await poll(listed, 10, "the message listed unacked after ack_timeout (1s)")
        assert (await view(http, r, mid))["delivery"] is None
        assert texts(await sim_sent(http, sims)) == ["mute-0"]


# -- unknown, then seen sent ---------------------------------------------------------------


async def test_an_unknown_message_becomes_sent_from_the_sims_message_any(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc], hooks: Hooks,
) -> None:
    r, sims = await fleet(sim_factory, router_factory, 1, PACE + hooks.target())
    async with aiohttp.ClientSession() as http:
        await place(http, r, ["lost"])
        # The next send goes out, then the sim closes the connection without an answer.
        async with http.post(sims[0].url + "/sim/faults", json={"sendText": {"drop_after_send": 1}}) as resp:
            assert resp.status == 200
        ids = [await enqueue(http, r, "lost", f"lost-{n}") for n in range(3)]

        async def all_sent() -> bool:
            return [(await view(http, r, mid))["state"] for mid in ids] == ["sent"] * len(ids)

        await poll(all_sent, 15, "the three messages sent, the dropped one too")

        async def told() -> bool:
            return hooks.states[ids[0]][-1:] == ["sent"]

        await poll(told, 5, "its sent event")
        first = await view(http, r, ids[0])
        await asyncio.sleep(1.0)  # a window in which a wrong resend would show
        sent = await sim_sent(http, sims)
        again = await view(http, r, ids[0])
    assert texts(sent) == ["lost-0", "lost-1", "lost-2"]  # lost-0 once, its answer was lost
    # It was unknown (its answer lost), then the sim's message.any made it sent.
    # (then "sent" again with each delivery change the acks make)
    assert hooks.states[ids[0]][:3] == ["sending", "unknown", "sent"], hooks.states[ids[0]]
    assert set(hooks.states[ids[0]][3:]) <= {"sent"}, hooks.states[ids[0]]
    hooks.one_id_per_change()
    assert first["state"] == "sent" and first["error"] is None and first["response"] is None
    print(f"\nunknown -> sent from message.any; delivery after: {again['delivery']}")


# -- ban signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"status": 429, "count": 1}, {"status": 500, "count": 5}],
                         ids=["429", "five-500s-in-a-row"])
async def test_a_ban_signal_pauses_that_session_only(
    fault: dict[str, int], sim_factory: Callable[..., Proc],
    router_factory: Callable[..., RouterProc],
) -> None:
    # One sim: both sessions on it (the sim's faults hit whichever send comes next, so
    # only the banned session sends until it is paused).
    r, sims = await fleet(sim_factory, router_factory, 1, PACE, token=True)
    sim = sims[0]

    async def paused_events() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await admin(http, r, "/admin/events?kind=outbox_session_paused")
        return found

    async with aiohttp.ClientSession() as http:
        await place(http, r, ["banned", "fine"])
        async with http.post(sim.url + "/sim/faults", json={"sendText": fault}) as resp:
            assert resp.status == 200
        held = [await enqueue(http, r, "banned", f"banned-{n}") for n in range(3)]

        async def paused() -> bool:
            return bool(await paused_events())

        await poll(paused, 15, "the banned session paused")
        assert (await admin(http, r, "/admin/outbox/sessions/banned"))["paused"] is True
        # The other session on the same sim keeps sending; the banned one's queue holds.
        held.append(await enqueue(http, r, "banned", "banned-3"))
        for n in range(5):
            await enqueue(http, r, "fine", f"fine-{n}")

        async def fine_sent() -> bool:
            return len(texts(await sim_sent(http, sims), "fine")) == 5

        await poll(fine_sent, 15, "the fine session's messages sent")
        await asyncio.sleep(1.0)  # a window for a wrong send or a second event to show
        sent = await sim_sent(http, sims)
        events = await paused_events()
        fine = await admin(http, r, "/admin/outbox/sessions/fine")
        states = Counter([(await view(http, r, mid))["state"] for mid in held])
        assert texts(sent, "fine") == [f"fine-{n}" for n in range(5)]
        assert texts(sent, "banned") == []
        assert [e["session"] for e in events] == ["banned"], events  # exactly one event
        assert fine["paused"] is False
        assert states["sent"] == 0, states
        # An operator resumes it: the queue goes on, each message once, in order.
        async with http.post(r.admin_url + "/admin/outbox/sessions/banned/resume",
                             headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()

        async def resumed() -> bool:
            return len(texts(await sim_sent(http, sims), "banned")) == 4

        await poll(resumed, 15, "the banned session's queue sent after the resume")
        sent = await sim_sent(http, sims)
        events = await paused_events()
    assert texts(sent, "banned") == [f"banned-{n}" for n in range(4)]
    assert len(events) == 1
    print(f"\n{fault}: one outbox_session_paused ({events[0]['message']})")


async def test_a_message_any_before_the_unknown_still_tracks_its_acks(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
) -> None:
    """The other order of the race above, made certain: the session reports the message
    sent (``message.any``, through ``/sim/events``) before the send whose answer is lost."""
    r, sims = await fleet(sim_factory, router_factory, 1, PACE)
    sim = sims[0]
    wa_id = "true_1@c.us_EARLY0000000000000000"
    payload = {"id": wa_id, "timestamp": 1, "from": "me@c.us", "fromMe": True, "to": "1@c.us",
               "body": "early-0", "hasMedia": False, "ack": 1, "source": "api"}
    async with aiohttp.ClientSession() as http:
        await place(http, r, ["early"])
        async with http.post(sim.url + "/sim/events", json={
                "session": "early", "event": "message.any", "payload": payload}) as resp:
            assert resp.status == 201

        async def delivered() -> bool:  # every event the sim emitted reached the router
            async with http.get(sim.url + "/sim/stats") as resp:
                stats = await resp.json()
            hooks = stats["webhooks"]
            return bool(hooks["backlog"] == 0 and hooks["sent"] == stats["events_emitted"])

        await poll(delivered, 5, "the message.any delivered to the router")
        await asyncio.sleep(0.3)  # and applied (the tracker's loop)
        async with http.post(sim.url + "/sim/faults", json={"sendText": {"drop_after_send": 1}}) as resp:
            assert resp.status == 200
        mid = await enqueue(http, r, "early", "early-0")

        async def reconciled() -> bool:
            return bool((await view(http, r, mid))["state"] == "sent")

        await poll(reconciled, 10, "the unknown message reconciled (sent)")
        async with http.post(sim.url + "/sim/events", json={
                "session": "early", "event": "message.ack",
                "payload": {**payload, "ack": 3, "ackName": "READ"}}) as resp:
            assert resp.status == 201

        async def read() -> bool:
            delivery = (await view(http, r, mid))["delivery"]
            return delivery is not None and delivery["ack"] == "read"

        await poll(read, 3, "the reconciled message's ack applied")
        assert texts(await sim_sent(http, sims)) == ["early-0"]


async def test_an_earlier_identical_message_does_not_settle_an_unknown_one(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc],
) -> None:
    r, sims = await fleet(sim_factory, router_factory, 1, PACE)
    sim = sims[0]
    async with aiohttp.ClientSession() as http:
        await place(http, r, ["same"])
        first = await enqueue(http, r, "same", "same-text")

        async def first_read() -> bool:  # its message.any was observed before its acks
            delivery = (await view(http, r, first))["delivery"]
            return delivery is not None and delivery["ack"] == "read"

        await poll(first_read, 10, "the first message sent and read")
        # The sim now holds every send; the second one is in flight when it dies.
        async with http.post(sim.url + "/sim/faults", json={"sendText": {"delay": "60s"}}) as resp:
            assert resp.status == 200
        second = await enqueue(http, r, "same", "same-text")

        async def in_flight() -> bool:
            async with http.get(sim.url + "/sim/stats") as resp:
                calls = (await resp.json())["calls"]
            return bool(calls.get("same", {}).get("sendText", 0) == 2)

        await poll(in_flight, 10, "the second send in flight")
        sent = await sim_sent(http, sims)
        sim.proc.send_signal(signal.SIGKILL)
        sim.proc.wait(5)

        async def ended() -> bool:
            return bool((await view(http, r, second))["state"] in ("unknown", "sent"))

        await poll(ended, 10, "the second message's send ended")
        await asyncio.sleep(0.5)  # settled by the earlier message.any, if it is going to be
        state = (await view(http, r, second))["state"]
    assert texts(sent) == ["same-text"]  # the second never went out...
    assert state == "unknown"  # ...so nothing may say it did
