"""The simulated WAHA instance (``router.sim``): endpoints, lifecycle, webhooks, CLI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from router.sim import bound_port, create_sim_app, serve_sim
from router.sim.events import Event, ulid
from router.sim.media import PERIOD, file_chunks, pattern
from router.sim.webhooks import WebhookSender

REPO = Path(__file__).resolve().parent.parent
EVT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")
MiB = 1024 * 1024

SimFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


# -- fixtures and helpers --------------------------------------------------------------


@pytest_asyncio.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start simulators on loopback; every one is closed at teardown."""
    clients: list[Client] = []

    async def factory(name: str = "sim-a", **kwargs: Any) -> Client:
        client = TestClient(TestServer(create_sim_app(name, **kwargs), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        await client.close()


async def poll(check: Callable[[], Awaitable[bool]], deadline: float = 5.0) -> None:
    """Wait until ``check()`` holds, at most ``deadline`` seconds."""
    async with asyncio.timeout(deadline):
        # polling over HTTP: the state lives in another server, there is no event to await
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def status_of(client: Client, session: str) -> str | None:
    resp = await client.get(f"/api/sessions/{session}")
    if resp.status == 404:
        return None
    data = await resp.json()
    return str(data["status"])


async def wait_status(client: Client, session: str, status: str, deadline: float = 5.0) -> None:
    async def check() -> bool:
        return await status_of(client, session) == status

    await poll(check, deadline)


class Receiver:
    """A real webhook receiver on loopback; fails the first ``fail_first`` posts."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[CIMultiDictProxy[str], bytes]] = asyncio.Queue()
        self.attempts = 0
        self.fail_first = 0
        self.fail_status = 500
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=self.fail_status)
        await self.got.put((request.headers, raw))
        return web.json_response({"ok": True})

    async def next(self, deadline: float = 5.0) -> tuple[CIMultiDictProxy[str], dict[str, Any]]:
        headers, raw = await asyncio.wait_for(self.got.get(), deadline)
        body: dict[str, Any] = json.loads(raw)
        return headers, body

    async def next_raw(self, deadline: float = 5.0) -> tuple[CIMultiDictProxy[str], bytes]:
        return await asyncio.wait_for(self.got.get(), deadline)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{bound_port(runner)}/hook"
    yield rec
    await runner.cleanup()


# -- basics ----------------------------------------------------------------------------


async def test_ping_and_instance_header(make_sim: SimFactory) -> None:
    client = await make_sim("node-1")
    resp = await client.get("/ping")
    assert resp.status == 200
    assert await resp.json() == {"message": "pong"}
    assert resp.headers["X-Sim-Instance"] == "node-1"
    for path in ("/health", "/api/sessions/nope", "/anything/else", "/sim/stats"):
        resp = await client.get(path)
        assert resp.headers["X-Sim-Instance"] == "node-1", path


async def test_api_key_required_except_ping_and_health(make_sim: SimFactory) -> None:
    client = await make_sim(api_key="s3cret-key")
    assert (await client.get("/ping")).status == 200
    assert (await client.get("/health")).status == 200
    resp = await client.get("/api/sessions")
    assert resp.status == 401
    assert (await resp.json())["error"] == "Unauthorized"
    assert resp.headers["X-Sim-Instance"] == "sim-a"
    assert (await client.get("/api/sessions", headers={"X-Api-Key": "wrong"})).status == 401
    assert (await client.get("/api/sessions", headers={"X-Api-Key": "s3cret-key"})).status == 200
    assert (await client.get("/api/sessions?x-api-key=s3cret-key")).status == 200
    assert (await client.get("/sim/stats")).status == 401
    async with client.ws_connect("/ws?session=*&x-api-key=s3cret-key") as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "hi"


async def test_echo_never_reveals_the_api_key(make_sim: SimFactory) -> None:
    client = await make_sim(api_key="s3cret-key")
    resp = await client.post(
        "/api/default/chats?limit=5&x-api-key=s3cret-key",
        headers={"X-Api-Key": "s3cret-key"},
        json={"a": 1},
    )
    text = await resp.text()
    assert resp.status == 200
    assert "s3cret-key" not in text
    data = json.loads(text)
    assert data["headers"]["x-api-key-present"] is True
    assert data["query"] == {"limit": "5"}


async def test_echo_any_other_request(make_sim: SimFactory) -> None:
    client = await make_sim("node-2")
    resp = await client.put(
        "/api/default/chats/123%40c.us/messages?limit=10&offset=2",
        json={"text": "hi"},
        headers={
            "X-Request-Id": "req-1",
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "router.example",
            "X-Session-Id": "default",
        },
    )
    assert resp.status == 200
    data = await resp.json()
    assert data["instance"] == "node-2"
    assert data["method"] == "PUT"
    assert data["path"] == "/api/default/chats/123@c.us/messages"
    assert data["query"] == {"limit": "10", "offset": "2"}
    assert data["body"] == {"text": "hi"}
    assert data["headers"] == {
        "x-request-id": "req-1",
        "x-forwarded-for": "10.0.0.1",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "router.example",
        "x-session-id": "default",
        "x-api-key-present": False,
    }

    resp = await client.delete("/api/contacts/block")
    data = await resp.json()
    assert (data["method"], data["body"], data["body_size"]) == ("DELETE", None, 0)

    resp = await client.post("/api/x", data=b"plain text")
    assert (await resp.json())["body"] == "plain text"


async def test_echo_large_body_reports_size_and_digest(make_sim: SimFactory) -> None:
    client = await make_sim()
    blob = os.urandom(3 * MiB)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(blob), 65536):
            yield blob[i : i + 65536]

    resp = await client.post("/api/sendFile", data=chunks())
    data = await resp.json()
    assert data["body"] is None
    assert data["body_truncated"] is True
    assert data["body_size"] == len(blob)
    assert data["body_sha256"] == hashlib.sha256(blob).hexdigest()


# -- sessions --------------------------------------------------------------------------


async def test_create_list_get_sessions(make_sim: SimFactory) -> None:
    client = await make_sim()
    resp = await client.post("/api/sessions", json={"name": "alpha"})
    assert resp.status == 201
    data = await resp.json()
    assert data["name"] == "alpha"
    assert data["status"] == "WORKING"
    assert data["config"] == {}
    assert data["engine"] == {"engine": "WEBJS"}
    assert re.fullmatch(r"\d+@c\.us", data["me"]["id"])
    assert data["me"]["pushName"] == "alpha"

    resp = await client.post("/api/sessions", json={"name": "beta", "start": False})
    assert resp.status == 201
    beta = await resp.json()
    assert (beta["status"], beta["me"]) == ("STOPPED", None)

    resp = await client.post("/api/sessions", json={"name": "alpha"})
    assert resp.status == 422
    assert "already exists" in (await resp.json())["message"]

    running = await (await client.get("/api/sessions")).json()
    assert [s["name"] for s in running] == ["alpha"]
    everything = await (await client.get("/api/sessions?all=true")).json()
    assert sorted(s["name"] for s in everything) == ["alpha", "beta"]

    resp = await client.get("/api/sessions/alpha")
    assert resp.status == 200
    assert (await resp.json())["status"] == "WORKING"


async def test_unknown_session_is_404_waha_style(make_sim: SimFactory) -> None:
    client = await make_sim()
    resp = await client.get("/api/sessions/ghost")
    assert resp.status == 404
    data = await resp.json()
    assert data["error"] == "Session not found"
    assert data["message"].startswith("We didn't find a session with name 'ghost'")
    for action in ("stop", "restart", "logout"):
        assert (await client.post(f"/api/sessions/ghost/{action}")).status == 404
    assert (await client.delete("/api/sessions/ghost")).status == 404


async def test_start_creates_unknown_session_and_actions(make_sim: SimFactory) -> None:
    client = await make_sim()
    resp = await client.post("/api/sessions/s1/start")
    assert resp.status == 201
    assert (await resp.json())["status"] == "WORKING"
    # starting a running session is a no-op
    assert (await (await client.post("/api/sessions/s1/start")).json())["status"] == "WORKING"

    resp = await client.post("/api/sessions/s1/stop")
    assert resp.status == 201
    data = await resp.json()
    assert (data["status"], data["me"]) == ("STOPPED", None)
    assert (await (await client.post("/api/sessions/s1/restart")).json())["status"] == "WORKING"
    assert (await (await client.post("/api/sessions/s1/logout")).json())["status"] == "STOPPED"

    resp = await client.delete("/api/sessions/s1")
    assert resp.status == 200
    assert await status_of(client, "s1") is None

    stats = await (await client.get("/sim/stats")).json()
    assert stats["calls"]["s1"] == {
        "start": 2,
        "stop": 1,
        "restart": 1,
        "logout": 1,
        "delete": 1,
    }
    assert stats["requests"]["POST /api/sessions/{session}/start"] == 2


async def test_deprecated_body_name_endpoints(make_sim: SimFactory) -> None:
    client = await make_sim()
    resp = await client.post("/api/sessions/start", json={"name": "old"})
    assert resp.status == 201
    assert (await resp.json())["name"] == "old"
    assert await status_of(client, "old") == "WORKING"
    resp = await client.post("/api/sessions/stop", json={"name": "old"})
    assert (await resp.json())["status"] == "STOPPED"
    await client.post("/api/sessions/start", json={"name": "old"})
    resp = await client.post("/api/sessions/logout", json={"name": "old"})
    assert (await resp.json())["status"] == "STOPPED"
    # no name means "default"
    resp = await client.post("/api/sessions/start", json={})
    assert (await resp.json())["name"] == "default"
    # GET on the same path is a session lookup, not an action
    assert (await client.get("/api/sessions/start")).status == 404


async def test_start_delay_transitions(make_sim: SimFactory) -> None:
    client = await make_sim(start_delay=0.3)
    resp = await client.post("/api/sessions/slow/start")
    data = await resp.json()
    assert (data["status"], data["me"]) == ("STARTING", None)
    assert [s["name"] for s in await (await client.get("/api/sessions")).json()] == ["slow"]
    await wait_status(client, "slow", "WORKING", deadline=5.0)
    assert (await (await client.get("/api/sessions/slow")).json())["me"] is not None


async def test_stop_during_starting_cancels_the_start(make_sim: SimFactory) -> None:
    client = await make_sim(start_delay=0.2)
    await client.post("/api/sessions/s/start")
    assert await status_of(client, "s") == "STARTING"
    resp = await client.post("/api/sessions/s/stop")
    assert (await resp.json())["status"] == "STOPPED"
    await asyncio.sleep(0.5)  # well past start_delay: the cancelled start must not finish
    assert await status_of(client, "s") == "STOPPED"


async def test_restart_during_starting_restarts_the_delay(make_sim: SimFactory) -> None:
    client = await make_sim(start_delay=0.2)
    await client.post("/api/sessions/s/start")
    resp = await client.post("/api/sessions/s/restart")
    assert (await resp.json())["status"] == "STARTING"
    await wait_status(client, "s", "WORKING")


async def test_force_status(make_sim: SimFactory) -> None:
    client = await make_sim()
    await client.post("/api/sessions/s/start")
    resp = await client.post("/sim/sessions/s/status", json={"status": "FAILED"})
    assert resp.status == 200
    assert await status_of(client, "s") == "FAILED"
    assert (await client.post("/sim/sessions/s/status", json={"status": "BOGUS"})).status == 400
    assert (await client.post("/sim/sessions/x/status", json={"status": "FAILED"})).status == 404
    # a FAILED session can be started again
    await client.post("/api/sessions/s/start")
    assert await status_of(client, "s") == "WORKING"


# -- sendText --------------------------------------------------------------------------


async def test_send_text_semantics(make_sim: SimFactory) -> None:
    client = await make_sim(send_wait=0)
    body = {"session": "s1", "chatId": "12345@c.us", "text": "hello"}

    resp = await client.post("/api/sendText", json=body)
    assert resp.status == 404
    assert (await resp.json())["message"].startswith("We didn't find a session")

    await client.post("/api/sessions", json={"name": "s1", "start": False})
    resp = await client.post("/api/sendText", json=body)
    assert resp.status == 422
    data = await resp.json()
    assert (data["status"], data["expected"]) == ("STOPPED", ["WORKING"])

    await client.post("/api/sessions/s1/start")
    resp = await client.post("/api/sendText", json=body)
    assert resp.status == 201
    data = await resp.json()
    assert re.fullmatch(r"true_12345@c\.us_[0-9A-F]{20}", data["id"])
    assert data["body"] == "hello"

    await client.post("/sim/sessions/s1/status", json={"status": "FAILED"})
    assert (await client.post("/api/sendText", json=body)).status == 422


async def test_send_text_missing_session_means_default(make_sim: SimFactory) -> None:
    client = await make_sim()
    body = {"chatId": "1@c.us", "text": "x"}
    assert (await client.post("/api/sendText", json=body)).status == 404
    await client.post("/api/sessions/default/start")
    resp = await client.post("/api/sendText", json=body)
    assert resp.status == 201
    assert (await resp.json())["session"] == "default"


async def test_send_text_bad_requests(make_sim: SimFactory) -> None:
    client = await make_sim()
    await client.post("/api/sessions/default/start")
    assert (await client.post("/api/sendText", json={"text": "no chat"})).status == 400
    resp = await client.post("/api/sendText", data=b"{not json")
    assert resp.status == 400
    assert (await resp.json())["error"] == "Bad Request"


async def test_send_text_waits_for_starting_then_422(make_sim: SimFactory) -> None:
    client = await make_sim(start_delay=30, send_wait=0.1)
    await client.post("/api/sessions/s/start")
    resp = await client.post("/api/sendText", json={"session": "s", "chatId": "1@c.us"})
    assert resp.status == 422
    assert (await resp.json())["status"] == "STARTING"


async def test_send_text_waits_for_starting_then_201(make_sim: SimFactory) -> None:
    client = await make_sim(start_delay=0.2, send_wait=5)
    await client.post("/api/sessions/s/start")
    resp = await client.post("/api/sendText", json={"session": "s", "chatId": "1@c.us"})
    assert resp.status == 201


# -- media -----------------------------------------------------------------------------


async def test_qr_and_screenshot(make_sim: SimFactory) -> None:
    client = await make_sim()
    assert (await client.get("/api/s/auth/qr")).status == 404
    assert (await client.get("/api/screenshot?session=s")).status == 404
    await client.post("/api/sessions", json={"name": "s", "start": False})

    resp = await client.get("/api/s/auth/qr")
    assert resp.status == 200
    assert resp.content_type == "image/png"
    assert (await resp.read()).startswith(b"\x89PNG\r\n\x1a\n")

    resp = await client.get("/api/s/auth/qr?format=raw")
    assert isinstance((await resp.json())["value"], str)
    resp = await client.get("/api/s/auth/qr", headers={"Accept": "application/json"})
    data = await resp.json()
    assert data["mimetype"] == "image/png"
    assert data["data"]

    resp = await client.get("/api/screenshot?session=s")
    assert resp.status == 200
    assert resp.content_type == "image/png"
    assert (await resp.read()).startswith(b"\x89PNG")


def test_file_pattern_is_consistent() -> None:
    size = 3 * 65536 + 1234
    whole = b"".join(file_chunks(size))
    assert len(whole) == size
    assert whole == pattern(0, size)
    assert whole[1000:5000] == pattern(1000, 4000)
    assert all(whole[i] == i % PERIOD for i in range(0, size, 997))
    assert max(len(c) for c in file_chunks(size)) == 65536


async def test_file_streaming_default_size_and_content(make_sim: SimFactory) -> None:
    client = await make_sim()
    resp = await client.get("/api/files/any-session/abc.jpg")
    assert resp.status == 200
    assert resp.content_length == 4 * MiB
    offset = 0
    async for chunk in resp.content.iter_chunked(50_000):
        assert chunk == pattern(offset, len(chunk))
        offset += len(chunk)
    assert offset == 4 * MiB


async def test_file_streaming_sizes(make_sim: SimFactory) -> None:
    client = await make_sim()
    for size in (0, 1, 65535, 65536, 65537, 1_000_003):
        resp = await client.get(f"/api/files/s/f.bin?bytes={size}")
        body = await resp.read()
        assert resp.headers["Content-Length"] == str(size)
        assert body == pattern(0, size)
    assert (await client.get("/api/files/s/f.bin?bytes=lots")).status == 400
    assert (await client.get("/api/files/s/f.bin?bytes=-1")).status == 400


# -- websocket -------------------------------------------------------------------------


async def test_websocket_echo(make_sim: SimFactory) -> None:
    client = await make_sim()
    async with client.ws_connect("/ws?session=s1") as ws:
        for text in ("hello", '{"event": "not really"}', ""):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=5) == text
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01"


async def test_websocket_pushes_session_events(make_sim: SimFactory) -> None:
    client = await make_sim()
    async with (
        client.ws_connect("/ws?session=s1") as one,
        client.ws_connect("/ws?session=*") as every,
        client.ws_connect("/ws?session=*&events=message") as messages,
    ):
        await client.post("/api/sessions/s2/start")
        await client.post("/api/sessions/s1/start")
        got = [json.loads(await one.receive_str(timeout=5)) for _ in range(2)]
        assert [(e["event"], e["session"], e["payload"]["status"]) for e in got] == [
            ("session.status", "s1", "STARTING"),
            ("session.status", "s1", "WORKING"),
        ]
        assert all(EVT_ID.match(e["id"]) for e in got)
        everything = [json.loads(await every.receive_str(timeout=5)) for _ in range(4)]
        assert [e["session"] for e in everything] == ["s2", "s2", "s1", "s1"]

        resp = await client.post("/sim/incoming", json={"session": "s1", "text": "yo"})
        assert resp.status == 201
        msg = json.loads(await messages.receive_str(timeout=5))
        assert (msg["event"], msg["payload"]["body"]) == ("message", "yo")
        # echo still works alongside events
        await one.send_str("ping?")
        received = [await one.receive_str(timeout=5) for _ in range(2)]
        assert "ping?" in received


# -- webhooks --------------------------------------------------------------------------


async def test_webhooks_status_and_message_with_hmac(
    receiver: Receiver, make_sim: SimFactory
) -> None:
    client = await make_sim("node-w", webhook_url=receiver.url, hmac_key="hook-key")
    await client.post("/api/sessions/s1/start")
    for expected in ("STARTING", "WORKING"):
        headers, raw = await receiver.next_raw()
        body = json.loads(raw)
        assert body["event"] == "session.status"
        assert body["session"] == "s1"
        assert body["payload"]["status"] == expected
        assert body["payload"]["statuses"][-1]["status"] == expected
        assert body["engine"] == "WEBJS"
        assert EVT_ID.match(body["id"])
        assert headers["X-Webhook-Request-Id"] == body["id"]
        assert headers["X-Webhook-Timestamp"] == str(body["timestamp"])
        assert headers["X-Webhook-Hmac-Algorithm"] == "sha512"
        want = hmac.new(b"hook-key", raw, hashlib.sha512).hexdigest()
        assert hmac.compare_digest(headers["X-Webhook-Hmac"], want)
    me = body["me"]
    assert me is not None

    resp = await client.post(
        "/sim/incoming", json={"session": "s1", "from": "555@c.us", "text": "hi there"}
    )
    assert resp.status == 201
    emitted = await resp.json()
    headers, body = await receiver.next()
    assert body["id"] == emitted["id"]
    assert body["event"] == "message"
    assert body["me"] == me
    assert body["payload"]["from"] == "555@c.us"
    assert body["payload"]["body"] == "hi there"
    assert body["payload"]["fromMe"] is False

    assert (await client.post("/sim/incoming", json={"session": "nope"})).status == 404

    resp = await client.post(
        "/sim/events",
        json={"session": "s1", "event": "message.ack", "payload": {"ack": 3}},
    )
    assert resp.status == 201
    _, body = await receiver.next()
    assert (body["event"], body["payload"]) == ("message.ack", {"ack": 3})

    stats = await (await client.get("/sim/stats")).json()
    assert stats["webhooks"]["sent"] == 4
    assert stats["webhooks"]["failed"] == 0


async def test_webhooks_without_key_are_unsigned(receiver: Receiver, make_sim: SimFactory) -> None:
    client = await make_sim(webhook_url=receiver.url)
    await client.post("/api/sessions", json={"name": "s", "start": False})
    await client.post("/api/sessions/s/start")
    headers, body = await receiver.next()
    assert "X-Webhook-Hmac" not in headers
    assert "X-Webhook-Hmac-Algorithm" not in headers
    assert body["payload"]["status"] == "STARTING"


async def test_webhooks_retry_and_keep_order(receiver: Receiver, make_sim: SimFactory) -> None:
    receiver.fail_first = 2
    client = await make_sim(webhook_url=receiver.url)
    for i in range(5):
        resp = await client.post("/api/sessions", json={"name": f"s{i}", "start": False})
        assert resp.status == 201
        await client.post("/sim/events", json={"session": f"s{i}", "event": "custom"})
    sessions = [(await receiver.next())[1]["session"] for _ in range(5)]
    assert sessions == [f"s{i}" for i in range(5)]
    stats = await (await client.get("/sim/stats")).json()
    assert stats["webhooks"]["retried"] == 2
    assert stats["webhooks"]["sent"] == 5


async def test_webhooks_give_up_after_retries(receiver: Receiver, make_sim: SimFactory) -> None:
    receiver.fail_first = 100
    client = await make_sim(webhook_url=receiver.url)
    await client.post("/api/sessions", json={"name": "s", "start": False})
    await client.post("/sim/events", json={"session": "s", "event": "custom"})

    async def failed() -> bool:
        stats = await (await client.get("/sim/stats")).json()
        return bool(stats["webhooks"]["failed"] == 1)

    await poll(failed, deadline=10)
    assert receiver.attempts == 4  # one try + 3 retries


async def test_webhooks_no_retry_on_4xx(receiver: Receiver, make_sim: SimFactory) -> None:
    receiver.fail_first = 1
    receiver.fail_status = 400
    client = await make_sim(webhook_url=receiver.url)
    await client.post("/api/sessions", json={"name": "s", "start": False})
    await client.post("/sim/events", json={"session": "s", "event": "first"})
    await client.post("/sim/events", json={"session": "s", "event": "second"})
    _, body = await receiver.next()
    assert body["event"] == "second"
    stats = await (await client.get("/sim/stats")).json()
    assert (stats["webhooks"]["failed"], stats["webhooks"]["retried"]) == (1, 0)


async def test_webhook_queue_drops_oldest_when_full() -> None:
    sender = WebhookSender("http://127.0.0.1:9/never", maxsize=2)
    events = [Event.build("e", f"s{i}", None, {}) for i in range(3)]
    for event in events:
        sender.submit(event)
    assert sender.dropped == 1
    assert sender.backlog == 2


async def test_webhook_sender_unreachable_target_does_not_block(make_sim: SimFactory) -> None:
    client = await make_sim(webhook_url="http://127.0.0.1:9/unreachable")
    async with asyncio.timeout(2):
        for i in range(20):
            resp = await client.post(f"/api/sessions/s{i}/start")
            assert resp.status == 201


def test_ulid_shape_and_order() -> None:
    a, b = ulid(1_000), ulid(2_000)
    assert len(a) == len(b) == 26
    assert a < b
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", ulid())
    made = [ulid() for _ in range(2000)]  # many in one millisecond: still in order
    assert made == sorted(made) and len(set(made)) == len(made)


# -- stats -----------------------------------------------------------------------------


async def test_stats_and_reset(make_sim: SimFactory) -> None:
    client = await make_sim("node-s")
    await client.post("/api/sessions/a/start")
    await client.post("/api/sessions", json={"name": "b", "start": False})
    await client.post("/api/sendText", json={"session": "a", "chatId": "1@c.us"})
    await client.get("/api/a/chats")
    stats = await (await client.get("/sim/stats")).json()
    assert stats["instance"] == "node-s"
    assert stats["requests"]["POST /api/sendText"] == 1
    assert stats["requests"]["GET /api/a/chats"] == 1
    assert stats["calls"]["a"] == {"start": 1, "sendText": 1}
    assert stats["calls"]["b"] == {"create": 1}
    assert stats["sessions_by_status"]["WORKING"] == 1
    assert stats["sessions_by_status"]["STOPPED"] == 1
    assert stats["sessions_total"] == 2

    resp = await client.post("/sim/reset")
    assert resp.status == 200
    stats = await (await client.get("/sim/stats")).json()
    assert stats["calls"] == {}
    assert stats["requests"] == {"GET /sim/stats": 1}
    assert stats["sessions_total"] == 2  # sessions survive a counter reset

    await client.post("/sim/reset?sessions=true")
    assert (await (await client.get("/sim/stats")).json())["sessions_total"] == 0


# -- state file ------------------------------------------------------------------------


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_state_file_restores_sessions(tmp_path: Path, receiver: Receiver) -> None:
    state = tmp_path / "node.json"
    runner = await serve_sim("127.0.0.1", 0, "node-1", state_file=str(state))
    base = f"http://127.0.0.1:{bound_port(runner)}"
    try:
        async with aiohttp.ClientSession() as http:
            await http.post(f"{base}/api/sessions/w1/start")
            await http.post(f"{base}/api/sessions/w2/start")
            await http.post(f"{base}/api/sessions", json={"name": "idle", "start": False})
            await http.post(f"{base}/api/sessions/gone/start")
            await http.delete(f"{base}/api/sessions/gone")
            await http.post(f"{base}/api/sessions/w2/stop")
            await http.post(f"{base}/api/sessions/w2/start")
    finally:
        await runner.cleanup()

    saved = json.loads(state.read_text())
    assert saved["sessions"] == {"w1": "WORKING", "w2": "WORKING", "idle": "STOPPED"}
    assert _names(tmp_path) == ["node.json"]  # no temp files left

    # the instance "comes back": running sessions restart (STARTING -> WORKING)
    app = create_sim_app("node-1", state_file=str(state), start_delay=0.2, webhook_url=receiver.url)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert await status_of(client, "w1") == "STARTING"
        assert await status_of(client, "idle") == "STOPPED"
        await wait_status(client, "w1", "WORKING")
        await wait_status(client, "w2", "WORKING")
        statuses = [(await receiver.next())[1] for _ in range(4)]
        assert sorted((b["session"], b["payload"]["status"]) for b in statuses) == [
            ("w1", "STARTING"),
            ("w1", "WORKING"),
            ("w2", "STARTING"),
            ("w2", "WORKING"),
        ]
    assert json.loads(state.read_text())["sessions"]["w1"] == "WORKING"


async def test_state_file_unreadable_is_ignored(tmp_path: Path, make_sim: SimFactory) -> None:
    state = tmp_path / "bad.json"
    state.write_text("{ nope")
    client = await make_sim(state_file=str(state))
    assert await (await client.get("/api/sessions?all=true")).json() == []


# -- serving and the command line ------------------------------------------------------


async def test_serve_sim_on_free_port() -> None:
    runner = await serve_sim("127.0.0.1", 0, "free")
    try:
        port = bound_port(runner)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/ping") as resp,
        ):
            assert resp.headers["X-Sim-Instance"] == "free"
            assert await resp.json() == {"message": "pong"}
    finally:
        await runner.cleanup()


@pytest.mark.system
async def test_main_subprocess_serves_and_exits_on_sigterm() -> None:
    code = "from router.sim import main; raise SystemExit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import sys; {code}",
        "--port",
        "0",
        "--name",
        "cli-sim",
        "--start-delay",
        "0.1",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.fullmatch(r"sim cli-sim listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{match.group(1)}/ping") as resp,
        ):
            assert resp.headers["X-Sim-Instance"] == "cli-sim"
            assert await resp.json() == {"message": "pong"}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_shutdown_closes_open_websockets() -> None:
    runner = await serve_sim("127.0.0.1", 0, "closing")
    url = f"http://127.0.0.1:{bound_port(runner)}/ws?session=*"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "x"
        async with asyncio.timeout(4):  # well under the 5 s shutdown timeout
            await runner.cleanup()
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_file_head_sends_length_only(make_sim: SimFactory) -> None:
    client = await make_sim()
    resp = await client.head("/api/files/s/f.bin?bytes=123456")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "123456"
    assert await resp.read() == b""


async def test_main_exits_1_when_port_is_taken() -> None:
    runner = await serve_sim("127.0.0.1", 0, "holder")
    try:
        port = str(bound_port(runner))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from router.sim import main; raise SystemExit(main(sys.argv[1:]))",
            "--port",
            port,
            "--name",
            "late",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1
        assert out == b""
        assert b"cannot listen" in err
    finally:
        await runner.cleanup()


# -- what was really sent, faults, message.any / message.ack -------------------------------


async def _working(client: Client, *sessions: str) -> None:
    for s in sessions:
        await client.post("/api/sessions", json={"name": s})
        await wait_status(client, s, "WORKING")


async def test_sent_lists_every_real_send_in_order_per_session(make_sim: SimFactory) -> None:
    client = await make_sim()
    await _working(client, "a", "b")
    for i, s in enumerate(["a", "b", "a"]):
        resp = await client.post("/api/sendText", json={"session": s, "chatId": "1@c.us", "text": f"m{i}"})
        assert resp.status == 201
    # Not sent: unknown session, and a session not WORKING.
    assert (await client.post("/api/sendText", json={"session": "zz", "chatId": "1@c.us"})).status == 404
    everything = await (await client.get("/sim/sent")).json()
    assert [(m["session"], m["text"]) for m in everything] == [("a", "m0"), ("b", "m1"), ("a", "m2")]
    assert all(set(m) == {"id", "session", "chatId", "text", "ts"} for m in everything)
    assert everything[0]["ts"] <= everything[1]["ts"] <= everything[2]["ts"]
    only_a = await (await client.get("/sim/sent", params={"session": "a"})).json()
    assert [m["text"] for m in only_a] == ["m0", "m2"]


async def test_status_faults_answer_instead_of_sending_then_stop(make_sim: SimFactory) -> None:
    client = await make_sim()
    await _working(client, "s")
    resp = await client.post("/sim/faults", json={"sendText": {"status": 500, "count": 2}})
    assert (await resp.json())["sendText"]["count"] == 2
    body = {"session": "s", "chatId": "1@c.us", "text": "x"}
    statuses = [(await client.post("/api/sendText", json=body)).status for _ in range(3)]
    assert statuses == [500, 500, 201]
    assert len(await (await client.get("/sim/sent")).json()) == 1


async def test_drop_after_send_sends_then_cuts_the_connection(make_sim: SimFactory) -> None:
    client = await make_sim()
    await _working(client, "s")
    await client.post("/sim/faults", json={"sendText": {"drop_after_send": 1}})
    body = {"session": "s", "chatId": "1@c.us", "text": "lost answer"}
    with pytest.raises(aiohttp.ClientError):
        await client.post("/api/sendText", json=body)
    assert [m["text"] for m in await (await client.get("/sim/sent")).json()] == ["lost answer"]
    assert (await client.post("/api/sendText", json=body)).status == 201  # once only


async def test_delay_fault_and_clear(make_sim: SimFactory) -> None:
    client = await make_sim()
    await _working(client, "s")
    await client.post("/sim/faults", json={"sendText": {"delay": "300ms"}})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await client.post("/api/sendText", json={"session": "s", "chatId": "1@c.us"})).status == 201
    assert loop.time() - t0 >= 0.3
    resp = await client.post("/sim/faults", json={"clear": True})
    assert (await resp.json())["sendText"] == {"status": 0, "count": 0, "drop_after_send": 0, "delay": 0.0}


@pytest.mark.parametrize("body", [
    {"sendText": {"status": "500"}}, {"sendText": {"count": -1, "status": 500}},
    {"sendText": {"delay": "soon"}}, {"sendText": {"explode": 1}}, {"sendText": []},
    {"nope": True},
])
async def test_bad_faults_are_400_and_change_nothing(make_sim: SimFactory, body: dict[str, Any]) -> None:
    client = await make_sim()
    await client.post("/sim/faults", json={"sendText": {"status": 503, "count": 1}})
    resp = await client.post("/sim/faults", json=body)
    assert resp.status == 400
    now = await (await client.post("/sim/faults", json={})).json()
    assert now["sendText"]["status"] == 503 and now["sendText"]["count"] == 1


async def test_a_send_emits_message_any_then_acks(make_sim: SimFactory, receiver: Receiver) -> None:
    client = await make_sim(webhook_url=receiver.url, ack_delay=0.05)
    await _working(client, "s")
    sent = await (await client.post("/api/sendText", json={"session": "s", "chatId": "9@c.us",
                                                            "text": "hi"})).json()
    events: list[dict[str, Any]] = []
    while len([e for e in events if e["event"].startswith("message")]) < 3:
        _, body = await receiver.next()
        events.append(body)
    mine = [e for e in events if e["event"].startswith("message")]
    assert [e["event"] for e in mine] == ["message.any", "message.ack", "message.ack"]
    first = mine[0]["payload"]
    assert (first["id"], first["fromMe"], first["to"], first["body"]) == (sent["id"], True, "9@c.us", "hi")
    assert [(e["payload"]["id"], e["payload"]["ack"]) for e in mine[1:]] == [(sent["id"], 2), (sent["id"], 3)]


# -- --flavor evolution (issue 19) ------------------------------------------------------------

EVO_KEY = {"apikey": "evo-k"}


async def test_evolution_flavor_auth_is_apikey_and_root_is_open(make_sim: SimFactory) -> None:
    client = await make_sim("evo-1", api_key="evo-k", flavor="evolution")
    root = await client.get("/")
    assert root.status == 200 and "Evolution API" in (await root.json())["message"]
    for headers in ({}, {"X-Api-Key": "evo-k"}, {"apikey": "wrong"}):
        resp = await client.get("/instance/fetchInstances", headers=headers)
        assert resp.status == 401 and (await resp.json())["error"] == "Unauthorized"
    assert (await client.get("/instance/fetchInstances", headers=EVO_KEY)).status == 200
    # WAHA's routes are not spoken here: echoed like any other path.
    echoed = await client.get("/api/sessions", headers=EVO_KEY)
    assert (await echoed.json())["path"] == "/api/sessions"


async def test_evolution_flavor_instance_lifecycle(make_sim: SimFactory) -> None:
    client = await make_sim("evo-1", api_key="evo-k", flavor="evolution", start_delay=0.05)

    async def state(name: str) -> tuple[int, Any]:
        resp = await client.get(f"/instance/connectionState/{name}", headers=EVO_KEY)
        return resp.status, await resp.json()

    assert (await state("nope"))[0] == 404
    bad = await client.post("/instance/create", json={}, headers=EVO_KEY)
    assert bad.status == 400
    made = await client.post("/instance/create", json={"instanceName": "i1"}, headers=EVO_KEY)
    assert made.status == 201 and (await made.json())["instance"]["status"] == "close"
    again = await client.post("/instance/create", json={"instanceName": "i1"}, headers=EVO_KEY)
    assert again.status == 403
    assert await state("i1") == (200, {"instance": {"instanceName": "i1", "state": "close"}})
    connected = await client.get("/instance/connect/i1", headers=EVO_KEY)
    assert connected.status == 200 and (await connected.json())["count"] == 0
    assert (await state("i1"))[1]["instance"]["state"] == "connecting"
    await poll(lambda: _state_is(client, "i1", "open"))
    # Any name can be connected: its auth is in shared storage.
    assert (await client.get("/instance/connect/i2", headers=EVO_KEY)).status == 200
    rows = await (await client.get("/instance/fetchInstances", headers=EVO_KEY)).json()
    assert {r["name"] for r in rows} == {"i1", "i2"} and all(r["clientName"] == "evo-1" for r in rows)
    one = await client.get("/instance/fetchInstances?instanceName=i1", headers=EVO_KEY)
    assert [r["name"] for r in await one.json()] == ["i1"]
    assert (await client.get("/instance/fetchInstances?instanceName=x", headers=EVO_KEY)).status == 404
    sent = await client.post("/message/sendText/i1", json={"number": "4915100000000", "text": "hi"},
                             headers=EVO_KEY)
    body = await sent.json()
    assert sent.status == 201 and body["key"]["fromMe"] and body["message"]["conversation"] == "hi"
    log = await (await client.get("/sim/sent?session=i1", headers=EVO_KEY)).json()
    assert [m["text"] for m in log] == ["hi"]
    nobody = await client.post("/message/sendText/i1", json={"text": "x"}, headers=EVO_KEY)
    assert nobody.status == 400
    restarted = await client.post("/instance/restart/i1", headers=EVO_KEY)
    assert restarted.status == 200
    out = await client.delete("/instance/logout/i1", headers=EVO_KEY)
    assert out.status == 200 and (await out.json())["status"] == "SUCCESS"
    assert (await state("i1"))[1]["instance"]["state"] == "close"
    closed = await client.delete("/instance/logout/i1", headers=EVO_KEY)
    assert closed.status == 400
    not_connected = await client.post("/instance/restart/i1", headers=EVO_KEY)
    assert (await not_connected.json())["error"] is True
    closed_send = await client.post("/message/sendText/i1", json={"number": "1", "text": "x"},
                                    headers=EVO_KEY)
    assert closed_send.status == 400
    assert (await client.delete("/instance/delete/i2", headers=EVO_KEY)).status == 200
    assert (await state("i2"))[0] == 404
    for path in ("/instance/restart/zz", "/instance/logout/zz", "/instance/delete/zz",
                 "/message/sendText/zz"):
        method = client.post if "restart" in path or "message" in path else client.delete
        resp = await method(path, json={"number": "1"}, headers=EVO_KEY)
        assert resp.status == 404, path
    calls = (await (await client.get("/sim/stats", headers=EVO_KEY)).json())["calls"]
    assert calls["i1"]["start"] == 1 and calls["i1"]["logout"] == 2 and calls["i2"]["delete"] == 1


async def _state_is(client: Client, name: str, wanted: str) -> bool:
    resp = await client.get(f"/instance/connectionState/{name}", headers=EVO_KEY)
    return bool((await resp.json())["instance"]["state"] == wanted)
