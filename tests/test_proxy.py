"""The data path end to end: real router and simulator processes on loopback."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from tests.procs import Proc, RouterProc, bounded, free_port, router_config, rss_kib

pytestmark = pytest.mark.timeout(180)

JSON = {"Content-Type": "application/json"}


async def test_1000_sessions_sticky_in_every_form(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    sessions = [f"s{i:04d}" for i in range(1000)]
    placed: dict[str, str] = {}
    async with aiohttp.ClientSession(base_url=r.url) as http:

        async def create(s: str) -> None:
            async with http.post("/api/sessions", json={"name": s, "start": True}) as resp:
                assert resp.status == 201, await resp.text()
                inst = resp.headers["X-Router-Instance"]
                assert resp.headers["X-Sim-Instance"] == inst
                placed[s] = inst

        await bounded(32, [create(s) for s in sessions], 120)
        counts = Counter(placed.values())
        assert set(counts) == {"node-1", "node-2", "node-3"}
        avg = len(sessions) / 3
        assert max(counts.values()) <= math.ceil(1.25 * avg), counts

        async def every_form(s: str) -> None:
            want = placed[s]
            forms = [
                http.get(f"/api/sessions/{s}"),
                http.post("/api/sendText", json={"session": s, "chatId": "1@c.us", "text": "x"}),
                http.get("/api/screenshot", params={"session": s}),
                http.get(f"/api/{s}/chats"),
                http.get(f"/api/files/{s}/f1", params={"bytes": "10"}),
                http.get("/api/server/status", headers={"X-Session-Id": s}),
            ]
            for req in forms:
                async with req as resp:
                    await resp.read()
                    assert resp.headers["X-Router-Instance"] == want, (s, resp.url)
                    assert resp.headers["X-Sim-Instance"] == want
                    assert resp.status < 500, (resp.status, resp.url)

        # The sim needs the session WORKING for sendText; start-delay is 0 here.
        await bounded(32, [every_form(s) for s in sessions], 120)


async def test_fan_out_is_the_union(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    names = [f"fan{i}" for i in range(30)]
    async with aiohttp.ClientSession(base_url=r.url) as http:
        for n in names:
            async with http.post("/api/sessions", json={"name": n}) as resp:
                assert resp.status == 201
        async with http.get("/api/sessions", params={"all": "true"}) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert sorted(x["name"] for x in body) == sorted(names)
            assert set(resp.headers["X-Router-Instance"].split(",")) == {
                "node-1", "node-2", "node-3"
            }


@pytest.mark.parametrize(
    "path",
    [
        "/api/sessions/..%2F..%2Fetc/start",
        "/api/sessions/a%00b",
        "/api/sessions/" + "x" * 200,
        "/api/sessions/%C3%A9t%C3%A9",
        "/api/screenshot?session=..%2f",
    ],
)
async def test_invalid_session_ids_are_400(
    path: str, three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims[:1]))
    async with (
        aiohttp.ClientSession() as http,
        http.get(r.url + path, headers={"X-Request-Id": "req-abc"}) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
        assert body["error"] == "invalid_session_id"
        assert body["request_id"] == "req-abc"
        assert "X-Router-Instance" not in resp.headers


async def test_body_over_max_body_is_413(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims, "limits: {max_body: 1MiB}\n"))
    big = b"x" * (2 * 1024 * 1024)
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/api/s1/chats/x", data=big) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "body_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(32):
                yield b"y" * 65536

        # Chunked: the size is only known while streaming.
        try:
            async with http.post(r.url + "/api/s1/chats/x", data=chunks()) as resp:
                assert resp.status == 413
        except aiohttp.ClientError:
            pass  # the router may close before the client finished sending: also a refusal
        # The router still serves afterwards.
        async with http.post(r.url + "/api/s1/chats/x", data=b"small") as resp:
            assert resp.status == 200
            assert (await resp.json())["body"] == "small"


async def test_instance_refusing_connections_gives_json_error(
    router_factory: Callable[..., RouterProc], sim_factory: Callable[..., Proc]
) -> None:
    dead = Proc(proc=None, port=free_port(), name="dead")  # type: ignore[arg-type]
    r = router_factory(router_config([dead], "failover: {hold_timeout: 2s}\n"))
    async with aiohttp.ClientSession() as http, http.get(r.url + "/api/sessions/s1") as resp:
        assert resp.status in (502, 503)
        body = await resp.json()
        # Held while the instance might come back, then refused: never a traceback.
        assert body["error"] in ("upstream_error", "no_instance", "session_moving")
        if resp.status == 503:
            assert int(resp.headers["Retry-After"]) > 0
        assert body["request_id"]
        assert "Traceback" not in json.dumps(body)


async def test_large_download_streams_with_bounded_memory(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    size = 50 * 1024 * 1024
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/api/sessions", json={"name": "big"}) as resp:
            assert resp.status == 201
        async with http.get(r.url + "/api/files/big/f", params={"bytes": "1"}) as resp:
            await resp.read()  # warms up
        before = rss_kib(r.proc.pid, "VmHWM")
        got = 0
        async with http.get(r.url + "/api/files/big/f", params={"bytes": str(size)}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(256 * 1024):
                got += len(chunk)
                await asyncio.sleep(0)  # a slowish reader: back-pressure must hold
        after = rss_kib(r.proc.pid, "VmHWM")
    assert got == size
    assert after - before < 20 * 1024, f"router peak RSS grew {after - before} KiB"


async def test_websocket_round_trip(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/api/sessions", json={"name": "wsuser"}) as resp:
            home = resp.headers["X-Router-Instance"]
        async with http.ws_connect(r.url + "/ws?session=wsuser") as ws:
            await ws.send_str("hello through the router")
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type == aiohttp.WSMsgType.TEXT
                if msg.data == "hello through the router":
                    break
                assert asyncio.get_running_loop().time() < deadline
        async with http.get(r.url + "/api/sessions/wsuser") as resp:
            assert resp.headers["X-Router-Instance"] == home


async def test_headers_forwarded_and_api_key_injected(
    sim_factory: Callable[..., Proc], router_factory: Callable[..., RouterProc]
) -> None:
    sim = sim_factory("keyed", "--api-key", "sim-secret-1")
    r = router_factory(router_config([sim], instance_extra=", api_key: sim-secret-1"))
    async with aiohttp.ClientSession() as http:
        async with http.get(
            r.url + "/api/s1/chats/x?a=1",
            headers={"X-Request-Id": "rid-123", "X-Forwarded-For": "10.9.9.9", "Host": "app.example"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Request-Id"] == "rid-123"
            assert resp.headers["X-Router-Instance"] == "keyed"
            echo = await resp.json()
        h = echo["headers"]
        assert h["x-request-id"] == "rid-123"
        assert h["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
        assert h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-host"] == "app.example"
        assert echo["path"] == "/api/s1/chats/x"
        # A generated request id when the client sends none.
        async with http.get(r.url + "/api/s1/chats/y") as resp:
            assert len(resp.headers["X-Request-Id"]) >= 8
    assert "sim-secret-1" not in r.output()


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except TimeoutError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def test_pipelined_requests_answered_in_order(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    reqs = b"".join(
        b"GET /api/p%d/chats/x HTTP/1.1\r\nHost: t\r\nX-Request-Id: r%d\r\n\r\n" % (i, i)
        for i in range(5)
    )
    out = _raw(r.port, reqs + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    ids = [line.split(b": ")[1] for line in out.split(b"\r\n") if line.lower().startswith(b"x-request-id")]
    assert ids[:5] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    assert out.count(b"HTTP/1.1 200") == 6


def test_malformed_requests_get_400_and_router_survives(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    for bad in [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /api/x/chats HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]:
        out = _raw(r.port, bad)
        assert out.startswith(b"HTTP/1.1 400"), (bad, out[:200])
        assert b'"error":"bad_request"' in out
    out = _raw(r.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")


async def test_chunked_upload_and_head_and_keepalive(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    async with aiohttp.ClientSession() as http:
        async with http.post(r.url + "/api/sessions", json={"name": "up"}) as resp:
            assert resp.status == 201

        async def gen() -> AsyncIterator[bytes]:
            for i in range(10):
                yield b"part%d-" % i

        async with http.post(r.url + "/api/up/chats/x", data=gen()) as resp:
            assert resp.status == 200
            assert (await resp.json())["body"] == "".join(f"part{i}-" for i in range(10))
        async with http.head(r.url + "/api/files/up/f?bytes=1000") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == "1000"
        for _ in range(3):  # the connection is reused after HEAD
            async with http.get(r.url + "/api/files/up/f?bytes=100") as resp:
                assert len(await resp.read()) == 100


def test_sigterm_exits_zero(three_sims: list[Proc], router_factory: Callable[..., RouterProc]) -> None:
    r = router_factory(router_config(three_sims))
    assert r.stop() == 0


async def test_readyz_and_healthz_on_both_ports(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims))
    async with aiohttp.ClientSession() as http:
        for base in (r.url, r.admin_url):
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, (base, path)
                    assert (await resp.json())["status"] in ("ok", "ready")


async def test_unscoped_reject(
    three_sims: list[Proc], router_factory: Callable[..., RouterProc]
) -> None:
    r = router_factory(router_config(three_sims, "sessions: {unscoped: reject}\n"))
    async with aiohttp.ClientSession() as http:
        async with http.get(r.url + "/api/version") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "bad_request"
        async with http.get(r.url + "/api/version", headers={"X-Session-Id": "abc"}) as resp:
            assert resp.status == 200


async def test_upstream_connections_are_reused(router_factory: Callable[..., RouterProc]) -> None:
    """A warm router sends sequential requests over one kept-alive upstream connection."""
    from aiohttp import web

    peers: set[object] = set()

    async def handle(request: web.Request) -> web.Response:
        # Only proxied traffic: probes and rediscovery use the control-plane client.
        if request.path.endswith("/chats"):
            peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        backend = Proc(proc=None, port=port, name="b1")  # type: ignore[arg-type]
        r = router_factory(router_config([backend]))
        async with aiohttp.ClientSession() as http:
            for i in range(50):
                async with http.get(r.url + f"/api/s{i % 5}/chats") as resp:
                    assert resp.status == 200
                async with http.head(r.url + f"/api/s{i % 5}/chats") as resp:
                    assert resp.status == 200
        assert len(peers) == 1, f"{len(peers)} upstream connections for 100 sequential requests"
    finally:
        await runner.cleanup()
