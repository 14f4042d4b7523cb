"""The outbox in the component layer: create_app with fake instances and a manual clock;
order, pacing, limits, fairness, retries, waits, unknown, campaigns, idempotency."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.admin.client import add_commands, run
from router.errors import BodyTooLarge, Conflict, IdempotencyKeyReused, InvalidItems, NotFound
from tests.fakes import FakeInstances
from tests.test_component import ADMIN_TOKEN, World, make_world

pytestmark = pytest.mark.component

PACED = """
outbox:
  delay: {min: 2s, max: 4s}
  limits: {per_minute: 0, per_hour: 0, per_day: 0}
  retries: {policy: constant, delay: 1s, max_delay: 1s, attempts: 3, jitter: 0}
"""


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = await make_world(extra=PACED)
    yield w
    await w.app.stop()


def send_body(session: str, text: str) -> bytes:
    return json.dumps({"session": session, "chatId": "1@c.us", "text": text}).encode()


async def enqueue(w: World, session: str, text: str, **headers: str) -> dict[str, Any]:
    hdrs = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    status, body = await w.app.outbox.enqueue("POST", "/api/sendText", "", hdrs, send_body(session, text))
    assert status in (200, 202), body
    return body


def sent(fakes: FakeInstances, session: str | None = None) -> list[str]:
    return [t for inst in fakes.by_name.values() for s, t, _ in inst.sent if session in (None, s)]


def sent_times(fakes: FakeInstances, session: str) -> list[float]:
    return sorted(at for inst in fakes.by_name.values() for s, _, at in inst.sent if s == session)


async def state(w: World, message_id: str) -> str:
    return str((await w.app.outbox.message(message_id))["state"])


async def test_a_session_sends_in_order_with_a_gap_within_the_delay(world: World) -> None:
    await world.place(["s"])
    ids = [(await enqueue(world, "s", f"m{i}"))["id"] for i in range(5)]
    high = (await enqueue(world, "s", "urgent", x_outbox_priority="high"))["id"]
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 6, limit=60)
    # Nothing went out before the clock moved: "urgent" (high priority) goes first.
    assert sent(world.fakes) == ["urgent", "m0", "m1", "m2", "m3", "m4"]
    times = sent_times(world.fakes, "s")
    assert all(2.0 - 1e-6 <= b - a <= 4.0 + 0.2 for a, b in itertools.pairwise(times))
    view = await world.app.outbox.message(ids[0])
    assert view["state"] == "sent" and view["response"]["status"] == 201 and view["attempts"] == 1
    assert await state(world, high) == "sent"


async def test_a_long_queue_never_delays_another_session_by_more_than_a_gap(world: World) -> None:
    await world.place(["busy", "quiet"])
    for i in range(50):
        await enqueue(world, "busy", f"b{i}")
    await world.clock.run_until(lambda: len(sent(world.fakes, "busy")) >= 3, limit=30)
    t0 = world.clock.now()
    await enqueue(world, "quiet", "hello")
    await world.clock.run_until(lambda: sent(world.fakes, "quiet") == ["hello"], limit=10)
    assert world.clock.now() - t0 <= 0.5  # the quiet session has its own pace


async def test_limits_hold_per_window() -> None:
    w = await make_world(extra="outbox: {delay: {min: 0s, max: 0s}, limits: {per_minute: 3, per_hour: 0, per_day: 0}}")
    try:
        await w.place(["s"])
        for i in range(7):
            await enqueue(w, "s", f"m{i}")
        await w.clock.run_until(lambda: len(sent(w.fakes)) == 7, limit=200)
        times = sent_times(w.fakes, "s")
        for t in times:
            assert sum(1 for u in times if t - 60 < u <= t) <= 3
        assert times[3] - times[0] >= 60 and times[6] - times[3] >= 60
    finally:
        await w.app.stop()


async def test_5xx_is_retried_and_counted_then_sent_once(world: World) -> None:
    where = await world.place(["s"])
    world.fakes[where["s"]].fail_sends = 2
    m = await enqueue(world, "s", "retry me")
    await world.clock.run_until(lambda: sent(world.fakes) == ["retry me"], limit=30)
    view = await world.app.outbox.message(m["id"])
    assert (view["state"], view["attempts"]) == ("sent", 3)


async def test_retries_exhausted_fail_with_the_instances_answer(world: World) -> None:
    where = await world.place(["s"])
    world.fakes[where["s"]].fail_sends = 5
    m = await enqueue(world, "s", "never")
    await world.clock.run_until(lambda: world.app.dispatcher.finished["failed"] == 1, limit=30)
    view = await world.app.outbox.message(m["id"])
    assert (view["state"], view["attempts"]) == ("failed", 3)
    assert view["response"]["status"] == 500 and sent(world.fakes) == []


async def test_a_lost_answer_is_unknown_and_never_sent_again(world: World) -> None:
    where = await world.place(["s"])
    world.fakes[where["s"]].drop_sends = 1
    m = await enqueue(world, "s", "maybe")
    after = await enqueue(world, "s", "next")
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 2, limit=30)
    await world.clock.advance(30)
    assert sent(world.fakes) == ["maybe", "next"]  # "maybe" once: never resent by itself
    assert await state(world, m["id"]) == "unknown" and await state(world, after["id"]) == "sent"
    # Sending it again is the client's explicit decision.
    await world.app.outbox.retry(m["id"])
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 3, limit=30)
    assert await state(world, m["id"]) == "sent"


def webhook(event: str, session: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"event": event, "session": session, "payload": payload}).encode()


async def test_acks_reach_delivery_and_unacked_sends_are_counted(world: World) -> None:
    await world.place(["s"])
    acked = await enqueue(world, "s", "hello")
    silent = await enqueue(world, "s", "nobody acks me")
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 2, limit=30)
    await world.clock.advance(1)
    view = await world.app.outbox.message(acked["id"])
    wa = view["response"]["body"]["id"]
    tracker = world.app.tracker
    for level in (2, 3, 2):  # device, read, then a late device ack: read stays
        tracker.observe("message.ack", "s", webhook("message.ack", "s", {"id": wa, "ack": level}))
        await world.clock.advance(0.1)
    assert (await world.app.outbox.message(acked["id"]))["delivery"]["ack"] == "read"
    tracker.observe("message.ack", "s", webhook("message.ack", "s", {"id": "true_other", "ack": 3}))
    tracker.observe("message", "s", b"{}")  # not the outbox's
    await world.clock.advance(400)  # past outbox.ack_timeout (5m)
    assert tracker.unacked_total == 1
    unacked = (await world.app.outbox.overview())["unacked"]
    assert unacked == {"count": 1, "oldest": [silent["id"]]}


@pytest.mark.parametrize("any_first", [False, True], ids=["unknown-first", "message-any-first"])
async def test_an_unknown_message_the_instance_reports_sent_becomes_sent(
        world: World, any_first: bool) -> None:
    where = await world.place(["s"])
    world.fakes[where["s"]].drop_sends = 1
    tracker = world.app.tracker
    seen = webhook("message.any", "s", {"id": "true_x", "fromMe": True, "to": "1@c.us",
                                        "body": "maybe", "timestamp": 1})
    if any_first:
        tracker.observe("message.any", "s", seen)
    m = await enqueue(world, "s", "maybe")
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 1, limit=30)
    await world.clock.advance(1)
    if not any_first:
        assert await state(world, m["id"]) == "unknown"
        tracker.observe("message.any", "s", seen)
        await world.clock.advance(0.1)
    view = await world.app.outbox.message(m["id"])
    assert view["state"] == "sent" and view["error"] is None
    assert sent(world.fakes) == ["maybe"] and tracker.reconciled == 1


def paused_events(world: World) -> list[str]:
    return [str(e.session) for e in world.app.events.recent(kind="outbox_session_paused")]


@pytest.mark.parametrize(("status", "sends"), [(429, 1), (500, 5)], ids=["429", "five-500s-in-a-row"])
async def test_ban_signals_pause_that_session_only(world: World, status: int, sends: int) -> None:
    where = await world.place(["banned", "fine"])
    inst = world.fakes[where["banned"]]
    inst.fail_status, inst.fail_sends = status, sends
    limited = [await enqueue(world, "banned", f"b{i}") for i in range(3)]
    await enqueue(world, "fine", "f0")
    await world.clock.run_until(lambda: bool(paused_events(world)), limit=120)
    await world.clock.advance(30)
    assert paused_events(world) == ["banned"]  # one alert
    assert (await world.app.outbox.session("banned"))["paused"]
    assert sent(world.fakes, "fine") == ["f0"] and sent(world.fakes, "banned") == []
    assert await state(world, limited[0]["id"]) in ("queued", "failed")
    # an operator resumes it: the queue goes on
    await world.app.outbox.pause_session("banned", False)
    await world.clock.run_until(lambda: len(sent(world.fakes, "banned")) >= 2, limit=60)


async def test_a_session_its_instance_reports_stopped_pauses(world: World) -> None:
    where = await world.place(["s"])
    world.app.router.record_status("s", "STOPPED")  # say, a session.status webhook
    m = await enqueue(world, "s", "hello")
    await world.clock.run_until(lambda: bool(world.fakes[where["s"]].count("GET", "/api/sessions/s")), limit=10)
    await world.clock.advance(2)
    assert paused_events(world) == [] and sent(world.fakes) == ["hello"]  # the instance said WORKING
    world.fakes[where["s"]].sessions["s"] = "STOPPED"
    world.app.router.record_status("s", "STOPPED")
    later = await enqueue(world, "s", "later")
    await world.clock.run_until(lambda: bool(paused_events(world)), limit=20)
    assert await state(world, later["id"]) == "queued" and await state(world, m["id"]) == "sent"


async def test_a_stalled_campaign_raises_one_alert(world: World) -> None:
    body = {"name": "stuck", "messages": [{"path": "/api/sendText", "body": {
        "session": "never-placed", "chatId": "1@c.us", "text": "x"}}]}
    await world.app.outbox.create_campaign(body, {})
    await world.clock.advance(700)  # > outbox.stall_alert (10m); the session is never placed
    stalled = world.app.events.recent(kind="outbox_campaign_stalled")
    assert len(stalled) == 1


async def test_a_session_on_a_dead_instance_waits_and_resumes_on_its_new_instance() -> None:
    w = await make_world(extra="outbox: {retries: {attempts: 10}}")
    try:
        where = await w.place(["s"])
        old = where["s"]
        w.fakes[old].crash()
        m = await enqueue(w, "s", "across failover")
        # The first attempt is refused; the instance is probed at once and seen down: from
        # then on the queue waits (no attempts) until the session is restored elsewhere.
        await w.clock.run_until(lambda: not w.app.fleet.by_name[old].healthy, limit=5)
        await w.clock.advance(3.0)
        view = await w.app.outbox.message(m["id"])
        assert view["state"] == "queued" and view["attempts"] <= 2
        waited = view["attempts"]
        await w.clock.run_until(lambda: sent(w.fakes) == ["across failover"], limit=60)
        view = await w.app.outbox.message(m["id"])
        assert view["state"] == "sent" and view["instance"] != old
        assert view["attempts"] == waited + 1  # the wait itself counted nothing
    finally:
        await w.app.stop()


async def test_waiting_past_max_wait_fails() -> None:
    w = await make_world(extra="outbox: {max_wait: 10s}")
    try:
        m = await enqueue(w, "never-placed", "x")
        await w.clock.run_until(lambda: w.app.dispatcher.finished["failed"] == 1, limit=30)
        view = await w.app.outbox.message(m["id"])
        assert view["state"] == "failed" and "not placed" in view["error"]
    finally:
        await w.app.stop()


async def test_expired_and_cancelled(world: World) -> None:
    await world.place(["s"])
    first = await enqueue(world, "s", "first")
    later = await enqueue(world, "s", "later", x_outbox_expires="1s")
    doomed = await enqueue(world, "s", "doomed")
    assert (await world.app.outbox.cancel(doomed["id"]))["state"] == "cancelled"
    with pytest.raises(Conflict):
        await world.app.outbox.cancel(doomed["id"])
    await world.clock.run_until(lambda: world.app.dispatcher.finished["expired"] == 1, limit=30)
    assert sent(world.fakes) == ["first"]
    assert await state(world, later["id"]) == "expired" and await state(world, first["id"]) == "sent"
    with pytest.raises(NotFound):
        await world.app.outbox.message("msg_nope")


async def test_idempotency_key_returns_the_first_and_refuses_another_body(world: World) -> None:
    await world.place(["s"])
    a = await enqueue(world, "s", "once", idempotency_key="k1")
    status, again = await world.app.outbox.enqueue(
        "POST", "/api/sendText", "", {"content-type": "application/json", "idempotency-key": "k1"},
        send_body("s", "once"))
    assert status == 200 and again["id"] == a["id"]
    with pytest.raises(IdempotencyKeyReused):
        await enqueue(world, "s", "other text", idempotency_key="k1")
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 1, limit=10)
    await world.clock.advance(20)
    assert sent(world.fakes) == ["once"]


async def test_a_campaign_runs_pauses_resumes_and_finishes(world: World) -> None:
    await world.place(["c1", "c2"])
    body = {"name": "december", "messages": [
        {"path": "/api/sendText", "body": {"session": s, "chatId": "1@c.us", "text": f"{s}-{i}"}, "ref": f"r{i}"}
        for i in range(3) for s in ("c1", "c2")]}
    created = await world.app.outbox.create_campaign(body, {})
    cid = created["id"]
    assert created["queued"] == 6
    await world.app.outbox.set_campaign_state(cid, "pause")
    await world.clock.advance(10)
    view = await world.app.outbox.campaign(cid)
    assert view["state"] == "paused" and view["counts"]["queued"] + view["counts"]["sent"] == 6
    paused_sent = len(sent(world.fakes))
    await world.clock.advance(10)
    assert len(sent(world.fakes)) == paused_sent
    await world.app.outbox.set_campaign_state(cid, "resume")
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 6, limit=60)
    await world.clock.advance(0.5)
    view = await world.app.outbox.campaign(cid)
    assert view["state"] == "finished" and view["counts"]["sent"] == 6 and view["total"] == 6
    assert sent(world.fakes, "c1") == ["c1-0", "c1-1", "c1-2"]


async def test_cancelling_a_campaign_cancels_what_is_still_queued(world: World) -> None:
    await world.place(["s"])
    body = {"name": "x", "messages": [{"path": "/api/sendText",
                                       "body": {"session": "s", "chatId": "1@c.us", "text": str(i)}}
                                      for i in range(10)]}
    cid = (await world.app.outbox.create_campaign(body, {}))["id"]
    await world.clock.run_until(lambda: len(sent(world.fakes)) >= 2, limit=30)
    view = await world.app.outbox.set_campaign_state(cid, "cancel")
    # shown cancelled at once; each message is written so as its session's turn comes
    assert view["state"] == "cancelled" and view["counts"]["queued"] == 0
    done = len(sent(world.fakes))
    await world.clock.advance(60)
    assert len(sent(world.fakes)) <= done + 1  # at most the one already being sent
    view = await world.app.outbox.campaign(cid)
    assert view["state"] == "cancelled" and view["counts"]["cancelled"] >= 7
    totals = (await world.app.outbox.overview())["totals"]
    assert totals["queued"] == 0 and totals["cancelled"] + totals["sent"] == 10


async def test_bad_campaign_items_name_every_index_and_store_nothing(world: World) -> None:
    good = {"path": "/api/sendText", "body": {"session": "s", "chatId": "1@c.us"}}
    body = {"name": "bad", "messages": [good, {"body": {}}, good, {"path": "/api/sendText", "body": {}},
                                        {"path": "/api/sendText", "body": {"session": "s"}, "priority": "asap"}]}
    with pytest.raises(InvalidItems) as e:
        await world.app.outbox.create_campaign(body, {})
    # Item 3 names no session in its body: WAHA's default session ("default"), as the proxy.
    assert [p["index"] for p in problems(e.value)] == [1, 4]
    assert (await world.app.outbox_store.totals())["queued"] == 0
    small = await make_world(extra="outbox: {max_batch: 2}")
    try:
        with pytest.raises(BodyTooLarge):
            await small.app.outbox.create_campaign({"name": "big", "messages": [good] * 3}, {})
    finally:
        await small.app.stop()


async def test_a_paused_session_holds_its_queue(world: World) -> None:
    await world.place(["s"])
    await world.app.outbox.pause_session("s", True)
    await enqueue(world, "s", "held")
    await world.clock.advance(10)
    assert sent(world.fakes) == []
    view = await world.app.outbox.session("s")
    assert view["paused"] and view["depth"] == {"high": 0, "normal": 1}
    await world.app.outbox.pause_session("s", False)
    await world.clock.run_until(lambda: sent(world.fakes) == ["held"], limit=10)


def problems(e: InvalidItems) -> list[dict[str, Any]]:
    out = list(e.problems or [])
    assert all(isinstance(p, dict) for p in out)
    return [p for p in out if isinstance(p, dict)]


async def test_every_change_after_queued_reaches_the_webhook_targets() -> None:
    w = await make_world(extra=lambda fakes: PACED + "webhooks: {targets: [{url: '"
                         + fakes.url("node-4") + "/hook', events: ['outbox.*']}]}\n")
    try:
        where = await w.place(["s"])
        w.fakes[where["s"]].fail_sends = 1
        m = await enqueue(w, "s", "tracked")
        await w.clock.run_until(lambda: len(w.fakes["node-4"].hooks) >= 4, limit=30)
        mine = [h for h in w.fakes["node-4"].hooks if h["event"] == "outbox.message"]
        states = [(h["payload"]["state"], h["payload"]["attempts"]) for h in mine]
        assert states == [("sending", 0), ("queued", 1), ("sending", 1), ("sent", 2)]
        assert all(h["payload"]["id"] == m["id"] and h["session"] == "s" for h in mine)
        assert len({h["id"] for h in mine}) == 4  # one id per change: receivers can dedupe
    finally:
        await w.app.stop()


async def test_the_cli_shows_and_steers_campaigns_through_the_admin_port(world: World) -> None:
    await world.place(["s"])
    body = {"name": "cli", "messages": [{"path": "/api/sendText",
                                         "body": {"session": "s", "chatId": "1@c.us", "text": str(i)}}
                                        for i in range(4)]}
    cid = (await world.app.outbox.create_campaign(body, {}))["id"]
    admin = f"http://127.0.0.1:{world.ports[1]}"

    async def cli(*args: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser()
        add_commands(parser.add_subparsers(dest="command"), lambda a: 0)
        parsed = parser.parse_args([*args, "--admin", admin, "--token", ADMIN_TOKEN])
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, parsed, out, err)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = await cli("outbox", "pause", cid, "--json")
    assert code == 0 and json.loads(out)["state"] == "paused"
    code, out, _ = await cli("outbox", "campaigns")
    assert code == 0 and cid in out and "paused" in out
    code, out, _ = await cli("outbox", "session", "s", "--json")
    assert code == 0 and json.loads(out)["depth"]["normal"] in (3, 4)  # one may have gone
    code, out, _ = await cli("outbox", "resume", cid, "--json")
    assert code == 0 and json.loads(out)["state"] == "running"
    await world.clock.run_until(lambda: len(sent(world.fakes)) == 4, limit=60)
    await world.clock.advance(0.5)
    code, out, _ = await cli("outbox", "campaign", cid, "--json")
    assert code == 0 and json.loads(out)["state"] == "finished"
    code, _, err = await cli("outbox", "cancel", cid)
    assert code == 1 and "409" in err  # a finished campaign cannot be cancelled
    code, _, err = await cli("outbox", "campaign", "cmp_nope")
    assert code == 1 and "404" in err
    code, _, err = await cli("outbox", "campaign")
    assert code == 2 and "needs an id" in err


async def test_typing_comes_first_and_lasts_with_the_text() -> None:
    w = await make_world(extra="outbox: {typing: true, delay: {min: 0s, max: 0s}}")
    try:
        where = await w.place(["s"])
        inst = w.fakes[where["s"]]
        t0 = w.clock.now()
        await enqueue(w, "s", "x" * 40)  # 40 characters: 2 s of "typing..."
        await w.clock.run_until(lambda: sent(w.fakes) == ["x" * 40], limit=10)
        calls = [p for m, p in inst.calls if m == "POST"]
        assert calls[-3:] == ["/api/startTyping", "/api/stopTyping", "/api/sendText"]
        assert 2.0 <= inst.sent[0][2] - t0 <= 2.5
    finally:
        await w.app.stop()


async def test_finished_messages_are_forgotten_after_keep() -> None:
    w = await make_world(extra="outbox: {keep: 90s, delay: {min: 0s, max: 0s}}")
    try:
        await w.place(["s"])
        m = await enqueue(w, "s", "old")
        await w.clock.run_until(lambda: sent(w.fakes) == ["old"], limit=10)
        assert (await w.app.outbox.message(m["id"]))["state"] == "sent"
        await w.clock.advance(150)  # past keep, and a sweep (every 60 s) has run
        with pytest.raises(NotFound):
            await w.app.outbox.message(m["id"])
    finally:
        await w.app.stop()
