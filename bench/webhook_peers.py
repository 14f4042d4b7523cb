"""The webhook benchmark's other processes, each run as ``python -m bench.webhook_peers
<role> ...`` by bench/webhook_bench.py: ``_target`` (the app receiving the deliveries: raw
asyncio + httptools + uvloop, recording each event's delivery latency), ``_baseline`` (the
naive aiohttp handler doing one XADD per request) and ``_client`` (a paced poster)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.lib import HOST
from bench.lib.report import summary

WEBHOOK_PATH = "/webhooks"  # the router's default webhooks.path; the baseline uses it too
TARGET_PATH = "/hook"
BASELINE_STREAM = "baseline:events"


def waha_body(eid: str, ts_ms: int, session: str, n: int) -> bytes:
    """A WAHA "message" webhook of the same shape and size (~400 bytes) as the wrk bodies."""
    phone = f"49151{1000000 + n * 7919 % 9000000:07d}"
    return json.dumps(
        {
            "id": eid,
            "timestamp": ts_ms,
            "event": "message",
            "session": session,
            "me": {"id": "493000000001@c.us", "pushName": "Shop 1"},
            "payload": {
                "id": f"false_{phone}@c.us_3EB0{n * 2654435761 % 2**64:016X}",
                "timestamp": ts_ms // 1000,
                "from": f"{phone}@c.us",
                "fromMe": False,
                "to": "493000000001@c.us",
                "body": f"Hi! Is my order #{1000 + n % 9000} already on its way? Thanks",
                "hasMedia": False,
                "ack": 1,
                "ackName": "SERVER",
            },
            "engine": "WEBJS",
            "environment": {"version": "2024.10.1", "tier": "CORE"},
        },
        separators=(",", ":"),
    ).encode()


# --------------------------------------------------------------------------- _target


class _Group:
    """What the target saw of one group of events (the id's prefix before the first '-')."""

    def __init__(self) -> None:
        self.received = 0
        self.ids: set[str] = set()
        self.duplicates = 0
        self.latency_ms: list[float] = []
        self.min_size = 1 << 30
        self.max_size = 0
        self.first = 0.0
        self.last = 0.0


class _TargetStats:
    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}
        self.bad = 0

    def record(self, body: bytes) -> None:
        now = time.time()
        try:
            data = json.loads(body)
            eid = str(data["id"])
            ts = float(data["timestamp"])
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        name = eid.split("-", 1)[0]
        g = self.groups.get(name)
        if g is None:
            g = self.groups[name] = _Group()
            g.first = now
        g.received += 1
        g.last = now
        if eid in g.ids:
            g.duplicates += 1
        else:
            g.ids.add(eid)
        n = len(body)
        g.min_size = min(g.min_size, n)
        g.max_size = max(g.max_size, n)
        if name != "wrk":  # wrk's timestamps are its start time: no latency from those
            g.latency_ms.append(now * 1000 - ts)

    def report(self) -> dict[str, Any]:
        return {
            "bad": self.bad,
            "groups": {
                name: {
                    "received": g.received,
                    "unique": len(g.ids),
                    "duplicates": g.duplicates,
                    "size": [g.min_size, g.max_size],
                    "first": g.first,
                    "last": g.last,
                    "latency_ms": summary(g.latency_ms) if g.latency_ms else None,
                }
                for name, g in self.groups.items()
            },
        }


def target_main(argv: list[str]) -> int:
    """A fast webhook receiver: raw asyncio protocol, httptools (llhttp), uvloop."""
    import httptools
    import uvloop

    p = argparse.ArgumentParser(prog="webhook_peers _target")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    stats = _TargetStats()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.body: list[bytes] = []
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                assert self.transport is not None
                self.transport.close()

        def on_message_begin(self) -> None:
            self.url = b""
            self.body = []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            assert self.transport is not None
            method = self.parser.get_method()
            resp = ok
            if method == b"POST" and self.url == TARGET_PATH.encode():
                stats.record(b"".join(self.body))
            elif self.url == b"/_stats":
                data = json.dumps(stats.report()).encode()
                resp = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                    b"\r\n\r\n%s" % (len(data), data)
                )
            self.transport.write(resp)
            if not self.parser.should_keep_alive():
                self.transport.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Proto, HOST, args.port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(serve())
    return 0


# --------------------------------------------------------------------------- _baseline


def baseline_main(argv: list[str]) -> int:
    """The naive baseline: aiohttp web.Application, one XADD per request."""
    import redis.asyncio as aioredis
    from aiohttp import web

    p = argparse.ArgumentParser(prog="webhook_peers _baseline")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args(argv)
    accepted = b'{"status":"accepted"}'

    async def make_app() -> web.Application:
        r = aioredis.Redis(host=HOST, port=args.redis_port)

        async def webhook(request: web.Request) -> web.Response:
            body = await request.read()
            await r.xadd(BASELINE_STREAM, {"body": body})
            return web.Response(body=accepted, content_type="application/json")

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def close_redis(app: web.Application) -> None:
            await r.aclose()

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(WEBHOOK_PATH, webhook)
        app.router.add_get("/healthz", healthz)
        app.on_cleanup.append(close_redis)
        return app

    loop = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(make_app(), host=HOST, port=args.port, access_log=None, print=None, loop=loop)
    return 0


# --------------------------------------------------------------------------- _client


def client_main(argv: list[str]) -> int:
    """Paced poster: ``--rate`` events/s for ``--duration`` s, each with a fresh ms
    timestamp and a unique id ``<prefix>-<session>-<n>``; prints a JSON summary."""
    import aiohttp
    import uvloop

    p = argparse.ArgumentParser(prog="webhook_peers _client")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--prefix", default="paced")
    args = p.parse_args(argv)
    total = max(1, round(args.rate * args.duration))
    out: dict[str, Any] = {"planned": total, "sent": 0, "ok": 0, "non2xx": 0, "errors": 0}
    http_ms: list[float] = []
    samples: list[str] = []
    max_lag = 0.0

    async def run() -> None:
        nonlocal max_lag
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(args.concurrency)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def one(i: int) -> None:
                session = f"{args.prefix}s{i % args.sessions:03d}"
                eid = f"{args.prefix}-{session}-{i // args.sessions:07d}"
                body = waha_body(eid, int(time.time() * 1000), session, i)
                t0 = time.perf_counter()
                try:
                    headers = {"Content-Type": "application/json"}
                    async with http.post(args.url, data=body, headers=headers) as r:
                        await r.read()
                        if 200 <= r.status < 300:
                            out["ok"] += 1
                            http_ms.append((time.perf_counter() - t0) * 1000)
                        else:
                            out["non2xx"] += 1
                            if len(samples) < 5:
                                samples.append(f"HTTP {r.status}")
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    out["errors"] += 1
                    if len(samples) < 5:
                        samples.append(f"{type(e).__name__}: {e}")
                finally:
                    sem.release()

            tasks: set[asyncio.Task[None]] = set()
            start = loop.time() + 0.05
            for i in range(total):
                due = start + i / args.rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                max_lag = max(max_lag, loop.time() - due)
                out["sent"] += 1
                t = asyncio.create_task(one(i))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            sent_done = loop.time()
            if tasks:
                await asyncio.gather(*tasks)
            out["send_seconds"] = sent_done - start
            out["seconds"] = loop.time() - start

    uvloop.run(run())
    out["achieved_rate"] = out["sent"] / max(out.get("send_seconds", 0.0), 1e-9)
    out["max_schedule_lag_ms"] = max_lag * 1000
    out["http_ms"] = summary(http_ms)
    out["error_samples"] = samples
    print(json.dumps(out))
    return 0


ROLES: dict[str, Callable[[list[str]], int]] = {
    "_target": target_main,
    "_baseline": baseline_main,
    "_client": client_main,
}


def main(argv: list[str] | None = None) -> int:
    """``<role> [its arguments]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ROLES:
        print(f"usage: python -m bench.webhook_peers {{{','.join(ROLES)}}} ...", file=sys.stderr)
        return 2
    return ROLES[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
