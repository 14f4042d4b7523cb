"""Webhook relay benchmark: durable accept rate and delivery latency, against a naive baseline.

    /work/venv/bin/python bench/webhook_bench.py [--duration 10] [--warmup 2] [--connections 64]
        [--repeats 2] [--wrk-sessions 10] [--paced-rate 1000] [--paced-duration 10]
        [--paced-sessions 50] [--probe-rate 50]
        [--servers baseline,baseline-uvloop,router,router-target-down] [--keep-tmp]

One run does everything, on 127.0.0.1 only (issue 5, "Benchmark"):

1. starts a **target** (the app receiving webhooks: a raw asyncio + httptools server in its
   own process, answering 200 at once and recording, per delivered event, now minus the
   event's ``timestamp`` field) and one fresh redis-server per server under test (free
   port, temp dir, ``--appendonly yes --appendfsync everysec --save ""``);
2. starts the **router** (``python -m router run -c cfg.yaml``: Redis store, one webhook
   target, log level WARNING) and the naive **baseline**: an aiohttp ``web.Application``
   whose handler reads the body, does one ``await redis.xadd(stream, {"body": body})``
   (redis-py asyncio + hiredis) and answers 200, run twice: on aiohttp's default asyncio
   loop (``baseline``, the issue's naive handler) and on uvloop like the router
   (``baseline-uvloop``); and ``router-target-down``, the same router whose webhook target
   refuses connections: once its breaker is open it only accepts, which measures the accept
   path without the delivery work that shares its event loop;
3. **accept rate**: drives each with the same wrk load (``bench/wrk/webhook.lua``: ~400-byte
   WAHA "message" bodies, a few sessions, a unique id per event), a warmup then a measured
   run each, interleaved over ``--repeats`` rounds. During the router's measured run a
   **probe** client posts ``--probe-rate`` events/s with fresh timestamps: their delivery
   latency is the delivery latency under saturation. After each router run the script
   waits until the router's stream is empty (everything delivered) and checks that nothing
   was lost: entries added to the stream (``XINFO STREAM`` ``entries-added``) >= responses
   wrk and the probe saw as 2xx (a few more are fine: requests in flight when wrk stops are
   answered after it stopped counting, at most one per connection), and distinct events
   delivered to the target == entries added. The same count is checked for the baseline's
   stream;
4. **delivery latency**: a paced client (``--paced-rate`` events/s for ``--paced-duration`` s,
   ``--paced-sessions`` sessions, at most ``--paced-concurrency`` in flight, each event with a
   fresh ms ``timestamp`` and a unique id) posts to the router; the target reports now -
   ``timestamp`` per delivered event (p50/p90/p99/max);
5. prints markdown tables (exact commands, machine, date, git commit) and writes them, with
   the raw numbers as JSON, to ``bench/out/webhook-<timestamp>.{md,json}``;
6. stops every process it started (also on Ctrl-C / SIGTERM) and checks none is left.

Exits 1 on any non-2xx answer or socket error, a lost event, a process that died, or a
stream not drained in time; the issue's targets (>= 10,000 events/s accepted, p99 delivery
<= 50 ms) are reported as met or missed, not as failures.

The target, the baseline and the clients are this file, run as ``_target``, ``_baseline`` and
``_client`` subcommands. Reuses proxy_bench's process, wrk and Redis helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import proxy_bench as pb  # bench/ is sys.path[0] when this file runs as a script

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SELF = Path(__file__).resolve()
LUA_SCRIPT = BENCH_DIR / "wrk" / "webhook.lua"
HOST = pb.HOST
WEBHOOK_PATH = "/webhooks"  # the router's default webhooks.path; the baseline uses it too
TARGET_PATH = "/hook"
BASELINE_STREAM = "baseline:events"
ROUTER_PREFIX = "wa-router:"  # store.prefix default
LUA_SEED = 1
NOISY = pb.NOISY
SERVERS = ("baseline", "baseline-uvloop", "router", "router-target-down")
TARGET_RPS = 10_000  # issue 5: events/s accepted
TARGET_P99_MS = 50.0  # issue 5: p99 delivery latency


class BenchError(pb.BenchError):
    pass


# =========================================================================== helpers (subprocesses)


def pctl(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted or not)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def summary(values: list[float]) -> dict[str, float | int | None]:
    s = sorted(values)
    return {
        "n": len(s),
        "p50": pctl(s, 50),
        "p90": pctl(s, 90),
        "p99": pctl(s, 99),
        "p999": pctl(s, 99.9),
        "max": s[-1] if s else None,
        "mean": statistics.fmean(s) if s else None,
    }


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
    import httptools  # type: ignore[import-untyped]
    import uvloop

    p = argparse.ArgumentParser(prog="webhook_bench.py _target")
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

    p = argparse.ArgumentParser(prog="webhook_bench.py _baseline")
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

    p = argparse.ArgumentParser(prog="webhook_bench.py _client")
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


HELPERS = {"_target": target_main, "_baseline": baseline_main, "_client": client_main}


# =========================================================================== the benchmark


def redis_args(tmp: Path, port: int) -> list[str]:
    return [*pb.redis_args(tmp, port), "--appendfsync", "everysec"]


def router_conf(port: int, admin_port: int, redis_port: int, target_port: int, hook: str) -> str:
    # The instance is the target process (it answers 200 to the health check): the
    # config needs one, and no request in this benchmark is proxied to it.
    return f"""listen: {{host: {HOST}, port: {port}}}
admin: {{host: {HOST}, port: {admin_port}}}
log: {{level: WARNING}}
store: {{url: "redis://{HOST}:{redis_port}/0"}}
instances:
  - {{name: n1, url: 'http://{HOST}:{target_port}'}}
webhooks:
  targets:
    - {{url: '{hook}'}}
"""


def router_stream(url: str) -> str:
    from router.webhooks.filters import target_key  # the router's own naming

    return f"{ROUTER_PREFIX}wh:{target_key(url)}"


def entries_added(probe: pb.RedisProbe, key: str) -> int:
    """Entries ever added to a stream (XINFO STREAM ``entries-added``, Redis >= 7); 0 if
    the stream does not exist yet."""
    if probe.command("EXISTS", key) == 0:
        return 0
    reply = probe.command("XINFO", "STREAM", key)
    assert isinstance(reply, list)
    info = dict(zip(reply[::2], reply[1::2], strict=True))
    return int(info["entries-added"])


def xlen(probe: pb.RedisProbe, key: str) -> int:
    n = probe.command("XLEN", key)
    assert isinstance(n, int)
    return n


def http_json(port: int, path: str) -> Any:
    status, _, body = pb.http_get(port, path, timeout=10)
    if status != 200:
        raise BenchError(f"GET :{port}{path}: HTTP {status} {body[:200]!r}")
    return json.loads(body)


def http_post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metrics(admin_port: int) -> dict[str, float]:
    status, _, body = pb.http_get(admin_port, "/metrics", timeout=5)
    if status != 200:
        raise BenchError(f"router /metrics: HTTP {status}")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("router_webhook"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


@dataclass
class Server:
    """A server under test and its own redis-server."""

    name: str
    label: str
    port: int
    proc: pb.Proc
    redis_proc: pb.Proc
    probe: pb.RedisProbe
    stream: str
    runs: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{WEBHOOK_PATH}"

    def median(self, key: str) -> float:
        if key == "rps":
            return statistics.median(r.wrk.rps for r in self.runs)
        return statistics.median(r.wrk.latency_us[key] for r in self.runs)


@dataclass
class Run:
    round: int
    tag: str
    wrk: pb.WrkResult
    warmup: pb.WrkResult | None
    cpu: dict[str, float]
    others_before: float
    wrk_2xx: int  # warmup + measured run
    probe_ok: int
    stored: int  # entries added to the stream during warmup + run (+ probe)
    slack: int  # stored - 2xx: answered after wrk stopped counting (<= connections per wrk run)
    delivered_during_run: int | None = None  # router: distinct events the target got during the run
    delivered: int | None = None  # router: distinct events delivered, warmup + run + drain
    duplicates: int | None = None
    drain_seconds: float | None = None  # router: from the end of the run to an empty stream
    left_in_stream: int | None = None
    stream_len_after_run: int | None = None  # XLEN right after the run (router: the backlog)
    probe: dict[str, Any] | None = None  # probe client's summary
    probe_latency_ms: dict[str, Any] | None = None  # the target's view of the probe events


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = pb.Processes()
        self.failures: list[str] = []
        self.servers: list[Server] = []
        self.target: pb.Proc | None = None
        self.target_port = 0
        self.admin_port = 0
        self.paced: dict[str, Any] | None = None
        self.paced_discarded: list[dict[str, Any]] = []
        self.router_metrics: dict[str, float] = {}
        self.final_checks: dict[str, Any] = {}

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        a = self.args
        self.target_port = pb.free_ports(1)[0]
        py = sys.executable
        self.target = self.procs.start(
            "target",
            [py, str(SELF), "_target", "--port", str(self.target_port)],
            self.tmp / "target.log",
        )
        pb.wait_http(self.procs, self.target_port, "/ping", "target")
        for name, loop in (("baseline", "asyncio"), ("baseline-uvloop", "uvloop")):
            if name not in a.servers:
                continue
            port, redis_port = pb.free_ports(2)
            redis = self.procs.start(
                f"redis-server ({name})",
                redis_args(self.tmp / name, redis_port),
                self.tmp / f"redis-{name}.log",
            )
            pb.wait_redis(self.procs, redis_port)
            argv = [py, str(SELF), "_baseline", "--port", str(port)]
            argv += ["--redis-port", str(redis_port), "--loop", loop]
            proc = self.procs.start(name, argv, self.tmp / f"{name}.log")
            pb.wait_http(self.procs, port, "/healthz", name)
            label = f"naive baseline: aiohttp web.Application ({loop} loop), 1 XADD per request"
            stream = BASELINE_STREAM
            probe = pb.RedisProbe(redis_port)
            self.servers.append(Server(name, label, port, proc, redis, probe, stream))
        # "router-target-down": the same router whose webhook target is a closed port, so
        # that (once its breaker opens) it only accepts: the accept path's own capacity.
        hook = f"http://{HOST}:{self.target_port}{TARGET_PATH}"
        for name, url in (("router", hook), ("router-target-down", None)):
            if name not in a.servers:
                continue
            if url is None:
                url = f"http://{HOST}:{pb.free_ports(1)[0]}{TARGET_PATH}"  # nothing listens
            port, admin_port, redis_port = pb.free_ports(3)
            if name == "router":
                self.admin_port = admin_port
            redis = self.procs.start(
                f"redis-server ({name})",
                redis_args(self.tmp / name, redis_port),
                self.tmp / f"redis-{name}.log",
            )
            pb.wait_redis(self.procs, redis_port)
            conf = self.tmp / f"{name}.yaml"
            conf.write_text(router_conf(port, admin_port, redis_port, self.target_port, url))
            argv = [py, "-m", "router", "run", "-c", str(conf)]
            proc = self.procs.start(name, argv, self.tmp / f"{name}.log", cwd=REPO)
            pb.wait_http(self.procs, port, "/healthz", name)
            pb.wait_http(self.procs, port, "/readyz", f"{name} (readiness)")
            label = "wa-router (Redis store, 1 target, per_session ordering)"
            if name != "router":
                label = "wa-router, same config but its webhook target is down (connection refused)"
            probe = pb.RedisProbe(redis_port)
            self.servers.append(Server(name, label, port, proc, redis, probe, router_stream(url)))
        self.sanity_check()

    def sanity_check(self) -> None:
        """One event to each server: 200, stored; through the router also delivered."""
        for s in self.servers:
            before = entries_added(s.probe, s.stream)
            body = waha_body(f"check-{s.name}-1", int(time.time() * 1000), "check", 1)
            status, answer = http_post(s.port, WEBHOOK_PATH, body)
            if status != 200:
                raise BenchError(f"{s.name}: sanity POST: HTTP {status} {answer[:200]!r}")
            if entries_added(s.probe, s.stream) != before + 1:
                raise BenchError(f"{s.name}: sanity POST answered 200 but {s.stream} did not grow")
            if s.name == "router":
                self.wait_for(
                    lambda: self.target_group("check").get("unique", 0) >= 1,
                    10,
                    "the sanity event delivered to the target",
                )

    # -- target -----------------------------------------------------------------------

    def target_stats(self) -> dict[str, Any]:
        stats = http_json(self.target_port, "/_stats")
        assert isinstance(stats, dict)
        return stats

    def target_group(self, name: str) -> dict[str, Any]:
        group = self.target_stats()["groups"].get(name, {})
        assert isinstance(group, dict)
        return group

    def wait_for(self, cond: Any, timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while not cond():
            self.procs.check_alive()
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - t0

    # -- load -------------------------------------------------------------------------

    def wrk_argv(self, url: str, duration: float, tag: str) -> list[str]:
        a = self.args
        return [
            "wrk",
            f"-t{a.threads}",
            f"-c{a.connections}",
            f"-d{duration:g}s",
            "--latency",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            str(a.wrk_sessions),
            str(LUA_SEED),
            tag,
        ]

    def client_argv(
        self, url: str, rate: float, duration: float, sessions: int, concurrency: int, prefix: str
    ) -> list[str]:
        return [
            sys.executable,
            str(SELF),
            "_client",
            "--url",
            url,
            "--rate",
            f"{rate:g}",
            "--duration",
            f"{duration:g}",
            "--sessions",
            str(sessions),
            "--concurrency",
            str(concurrency),
            "--prefix",
            prefix,
        ]

    def cpu_now(self, s: Server) -> dict[str, float]:
        assert self.target is not None
        return {
            "wall": time.monotonic(),
            "server": pb.cpu_seconds(s.proc.pid),
            "redis": pb.cpu_seconds(s.redis_proc.pid),
            "target": pb.cpu_seconds(self.target.pid),
            "load": pb.children_cpu_seconds(),  # wrk and client runs (waited-for children)
            "machine": pb.machine_cpu_seconds(),
        }

    @staticmethod
    def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["wall"] - before["wall"]
        used = {k: (after[k] - before[k]) / wall for k in ("server", "redis", "target", "load")}
        used["others"] = max(
            0.0, (after["machine"] - before["machine"]) / wall - sum(used.values())
        )
        return used

    def run_once(self, s: Server, rnd: int, attempt: int) -> Run:
        a = self.args
        self.procs.check_alive()
        quiet = pb.wait_quiet(self.procs, a.wait_quiet)
        tag = f"{self.servers.index(s)}{rnd}{attempt}"
        added0 = entries_added(s.probe, s.stream)
        is_router = s.name == "router"
        stats0 = self.target_stats() if is_router else None
        warm = None
        if a.warmup > 0:
            warm, out = pb.run_wrk(self.wrk_argv(s.url, a.warmup, tag + "w"), a.warmup)
            if warm.errors:
                self.failures.append(
                    f"{s.name}: warmup {rnd}: {warm.non2xx} non-2xx, "
                    f"socket errors {warm.socket_errors}\n{out}"
                )
        self.procs.check_alive()
        probe_group = f"probe{tag}"
        probe_proc = None
        before = self.cpu_now(s)
        during0 = self.target_stats() if is_router else None
        try:
            if is_router and a.probe_rate > 0:
                probe_proc = subprocess.Popen(
                    self.client_argv(s.url, a.probe_rate, a.duration, 10, 16, probe_group),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            res, out = pb.run_wrk(self.wrk_argv(s.url, a.duration, tag), a.duration)
            during1 = self.target_stats() if is_router else None
            probe = None
            if probe_proc is not None:
                pout, perr = probe_proc.communicate(timeout=a.duration + 60)
                if probe_proc.returncode != 0:
                    raise BenchError(f"probe client exited {probe_proc.returncode}: {perr}")
                probe = json.loads(pout)
        finally:
            if probe_proc is not None and probe_proc.poll() is None:
                probe_proc.kill()
                probe_proc.wait(5)
        used = self.cpu_used(before, self.cpu_now(s))
        backlog = xlen(s.probe, s.stream)
        if res.errors:
            self.failures.append(
                f"{s.name}: round {rnd}: {res.non2xx} non-2xx, "
                f"socket errors {res.socket_errors}\n{out}"
            )
        if probe is not None and (probe["non2xx"] or probe["errors"]):
            self.failures.append(
                f"{s.name}: round {rnd}: probe client: {probe['non2xx']} "
                f"non-2xx, {probe['errors']} errors {probe['error_samples']}"
            )
        wrk_2xx = res.requests - res.non2xx + (warm.requests - warm.non2xx if warm else 0)
        probe_ok = probe["ok"] if probe else 0
        run = Run(
            round=rnd,
            tag=tag,
            wrk=res,
            warmup=warm,
            cpu=used,
            others_before=quiet,
            wrk_2xx=wrk_2xx,
            probe_ok=probe_ok,
            stored=0,
            slack=0,
            probe=probe,
            stream_len_after_run=backlog,
        )
        if is_router:
            assert stats0 is not None and during0 is not None and during1 is not None
            # Drained: the stream is empty (delivered entries are acknowledged and deleted).
            run.drain_seconds = self.wait_for(
                lambda: xlen(s.probe, s.stream) == 0,
                a.drain_timeout,
                f"the router's stream to drain ({xlen(s.probe, s.stream)} entries left)",
            )
            stats1 = self.target_stats()
            run.left_in_stream = xlen(s.probe, s.stream)
            run.delivered_during_run = _unique(during1, "wrk") - _unique(during0, "wrk")
            run.delivered = (
                _unique(stats1, "wrk") - _unique(stats0, "wrk") + _unique(stats1, probe_group)
            )
            run.duplicates = (
                _dups(stats1, "wrk") - _dups(stats0, "wrk") + _dups(stats1, probe_group)
            )
            g = stats1["groups"].get(probe_group)
            run.probe_latency_ms = g["latency_ms"] if g else None
        run.stored = entries_added(s.probe, s.stream) - added0
        run.slack = run.stored - wrk_2xx - probe_ok
        self.check_counts(s, run)
        self.log_run(s, run)
        self.procs.check_alive()
        return run

    def check_counts(self, s: Server, run: Run) -> None:
        a = self.args
        runs = 2 if a.warmup > 0 else 1
        if run.slack < 0:
            self.failures.append(
                f"{s.name}: round {run.round}: LOST: {run.wrk_2xx + run.probe_ok} answered 2xx "
                f"but only {run.stored} added to {s.stream}"
            )
        elif run.slack > a.connections * a.threads * runs:
            self.failures.append(
                f"{s.name}: round {run.round}: {run.stored} added to {s.stream} but only "
                f"{run.wrk_2xx + run.probe_ok} answered 2xx (more than the requests in flight)"
            )
        if s.name == "router-target-down":
            run.left_in_stream = xlen(s.probe, s.stream)
            if run.left_in_stream != entries_added(s.probe, s.stream):
                self.failures.append(f"{s.name}: entries left its stream with the target down")
        if s.name == "router" and run.delivered != run.stored:
            self.failures.append(
                f"router: round {run.round}: {run.stored} events stored but {run.delivered} "
                f"distinct ones delivered after the stream drained"
            )

    def log_run(self, s: Server, r: Run) -> None:
        extra = ""
        if s.name == "router":
            lat = r.probe_latency_ms or {}
            extra = (
                f"; delivered during run {r.delivered_during_run:,}, drained in "
                f"{r.drain_seconds:.1f}s, delivered {r.delivered:,} (dups {r.duplicates}); "
                f"probe delivery p50 {_ms(lat.get('p50'))} p99 {_ms(lat.get('p99'))}"
            )
        print(
            f"  round {r.round} {s.name:18s} {r.wrk.rps:>7,.0f} ev/s  p50 "
            f"{pb.fmt_us(r.wrk.latency_us['50'])}  p99 {pb.fmt_us(r.wrk.latency_us['99'])}  "
            f"errors {r.wrk.errors}; 2xx {r.wrk_2xx + r.probe_ok:,}, stored {r.stored:,} "
            f"(+{r.slack}){extra}; CPU server {pb.fmt_pct(r.cpu['server'])} redis "
            f"{pb.fmt_pct(r.cpu['redis'])} target {pb.fmt_pct(r.cpu['target'])} load "
            f"{pb.fmt_pct(r.cpu['load'])} others {pb.fmt_pct(r.cpu['others'])}",
            file=sys.stderr,
            flush=True,
        )

    def accept_rate(self) -> None:
        """Each server once per round; a run during which other processes used more than
        10% of a core is done again (up to ``--noisy-retries`` times) and the quietest
        attempt is kept."""
        a = self.args
        for rnd in range(1, a.repeats + 1):
            for s in self.servers:
                attempts: list[Run] = []
                for attempt in range(1 + a.noisy_retries):
                    attempts.append(self.run_once(s, rnd, attempt))
                    if attempts[-1].cpu["others"] <= NOISY:
                        break
                    if attempt < a.noisy_retries:
                        print(
                            f"  (noisy: others {attempts[-1].cpu['others']:.0%}; running it again)",
                            file=sys.stderr,
                        )
                kept = min(attempts, key=lambda r: r.cpu["others"])
                s.runs.append(kept)
                s.discarded += [r for r in attempts if r is not kept]

    def paced_run(self) -> None:
        """The paced load, done again like the accept runs when noisy (quietest kept)."""
        a = self.args
        router = next((s for s in self.servers if s.name == "router"), None)
        if router is None or a.paced_rate <= 0:
            return
        attempts: list[dict[str, Any]] = []
        for attempt in range(1 + a.noisy_retries):
            attempts.append(self.paced_once(router, f"paced{attempt}"))
            if attempts[-1]["cpu"]["others"] <= NOISY:
                break
            if attempt < a.noisy_retries:
                print(
                    f"  (noisy: others {attempts[-1]['cpu']['others']:.0%}; running it again)",
                    file=sys.stderr,
                )
        self.paced = min(attempts, key=lambda r: r["cpu"]["others"])
        self.paced_discarded = [r for r in attempts if r is not self.paced]

    def paced_once(self, router: Server, prefix: str) -> dict[str, Any]:
        a = self.args
        quiet = pb.wait_quiet(self.procs, a.wait_quiet)
        added0 = entries_added(router.probe, router.stream)
        argv = self.client_argv(
            router.url, a.paced_rate, a.paced_duration, a.paced_sessions, a.paced_concurrency,
            prefix,
        )  # fmt: skip
        before = self.cpu_now(router)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=a.paced_duration + 90, check=False
        )
        used = self.cpu_used(before, self.cpu_now(router))
        if done.returncode != 0:
            raise BenchError(f"paced client exited {done.returncode}: {done.stderr}")
        client = json.loads(done.stdout)
        if client["non2xx"] or client["errors"]:
            self.failures.append(
                f"router: paced client: {client['non2xx']} non-2xx, "
                f"{client['errors']} errors {client['error_samples']}"
            )
        drain = self.wait_for(
            lambda: (
                self.target_group(prefix).get("unique", 0) >= client["ok"]
                and xlen(router.probe, router.stream) == 0
            ),
            a.drain_timeout,
            "every paced event delivered",
        )
        group = self.target_group(prefix)
        stored = entries_added(router.probe, router.stream) - added0
        if stored != client["ok"] or group["unique"] != stored:
            self.failures.append(
                f"router: paced: {client['ok']} answered 2xx, {stored} stored, "
                f"{group['unique']} delivered"
            )
        lat = group["latency_ms"]
        print(
            f"  paced {a.paced_rate:g}/s x {a.paced_duration:g}s: sent {client['sent']:,} at "
            f"{client['achieved_rate']:,.0f}/s, 2xx {client['ok']:,}, delivered "
            f"{group['unique']:,} (dups {group['duplicates']}); delivery p50 {_ms(lat['p50'])} "
            f"p99 {_ms(lat['p99'])} max {_ms(lat['max'])}; HTTP p50 "
            f"{_ms(client['http_ms']['p50'])} p99 {_ms(client['http_ms']['p99'])}; CPU router "
            f"{pb.fmt_pct(used['server'])} target {pb.fmt_pct(used['target'])} client "
            f"{pb.fmt_pct(used['load'])} others {pb.fmt_pct(used['others'])}",
            file=sys.stderr,
            flush=True,
        )
        return {
            "argv": argv,
            "client": client,
            "target": group,
            "stored": stored,
            "cpu": used,
            "others_before": quiet,
            "drain_seconds_after_client": drain,
        }

    def final(self) -> None:
        router = next((s for s in self.servers if s.name == "router"), None)
        if router is None:
            return
        self.router_metrics = metrics(self.admin_port)
        dead = (
            xlen(router.probe, ROUTER_PREFIX + "wh:dead")
            if router.probe.command("EXISTS", ROUTER_PREFIX + "wh:dead")
            else 0
        )
        pending = router.probe.command("XPENDING", router.stream, "wa-router")
        stats = self.target_stats()
        self.final_checks = {
            "stream_len": xlen(router.probe, router.stream),
            "stream_entries_added": entries_added(router.probe, router.stream),
            "pending": pending[0] if isinstance(pending, list) else pending,
            "dead": dead,
            "target_bad_bodies": stats["bad"],
            "target_duplicates": sum(g["duplicates"] for g in stats["groups"].values()),
            "target_distinct": sum(g["unique"] for g in stats["groups"].values()),
        }
        retried = self.router_metrics.get("router_webhooks_retried_total", 0)
        if dead or retried or stats["bad"]:
            self.failures.append(
                f"router: {dead} dead entries, {retried:g} retries, "
                f"{stats['bad']} unparsable deliveries"
            )


def _unique(stats: dict[str, Any], group: str) -> int:
    return int(stats["groups"].get(group, {}).get("unique", 0))


def _dups(stats: dict[str, Any], group: str) -> int:
    return int(stats["groups"].get(group, {}).get("duplicates", 0))


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} ms" if v < 1000 else f"{v / 1000:.2f} s"


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = pb.version_of(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "router"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import aiohttp, redis, uvloop, httptools; "
            "print(aiohttp.__version__, redis.__version__, uvloop.__version__, httptools.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout.split()
    libs = dict(zip(("aiohttp", "redis-py", "uvloop", "httptools"), versions, strict=False))
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"Python {platform.python_version()} ({sys.executable})",
        "libs": ", ".join(f"{k} {v}" for k, v in libs.items()),
        "wrk": pb.version_of(["wrk", "-v"]).split(" Copyright")[0],
        "redis": pb.version_of(["redis-server", "--version"]).split(" sha=")[0],
        "git": git + (" (router/ modified)" if dirty else ""),
    }


def render(b: Bench, info: dict[str, str], started: dt.datetime) -> str:
    a = b.args
    cmd = shlex.join([sys.executable, *sys.argv])
    url = f"http://{HOST}:PORT{WEBHOOK_PATH}"
    base = next((s for s in b.servers if s.name == "baseline" and s.runs), None)
    router = next((s for s in b.servers if s.name == "router" and s.runs), None)
    base_rps = base.median("rps") if base else None
    lines = [
        f"## Webhook relay benchmark, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{cmd}`",
        f"- git commit: `{info['git']}`",
        "- machine: "
        + ", ".join(
            [
                f"{info['nproc']} CPUs ({info['cpu']})",
                info["kernel"],
                info["python"],
                info["libs"],
                info["wrk"],
                info["redis"],
            ]
        ),
        f"- accept load: `{shlex.join(b.wrk_argv(url, a.duration, 'TAG'))}` against each "
        f"server, after a {a.warmup:g} s warmup (same command, `-d{a.warmup:g}s`); "
        f"{a.repeats} interleaved round(s); medians shown. Bodies: WAHA `message` events, "
        f"{_sizes(b, 'wrk')} bytes, {a.wrk_sessions} sessions, a unique id each",
        "- each server has its own fresh `redis-server --appendonly yes --appendfsync everysec "
        '--save ""` (AOF on the local disk); the router\'s config: `store: {url: '
        "redis://127.0.0.1:PORT/0}`, `webhooks: {targets: [{url: http://127.0.0.1:TPORT/hook}]}`"
        ", `log: {level: WARNING}`, one instance (the target process); defaults otherwise "
        "(`ordering: per_session`, delivery concurrency 64)",
        "- target: one process, asyncio + httptools + uvloop, answers 200 at once; records "
        "now - `timestamp` of each delivered event",
        "",
        "### Durable accept rate",
        "",
        "| server | events/s | p50 | p99 | errors | ratio to baseline | server CPU "
        "| server CPU per event | redis CPU | target CPU | wrk (+probe) CPU | others CPU "
        "| events/s per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for s in b.servers:
        if not s.runs:
            lines.append(f"| {s.label} |" + " - |" * 11 + " (no run) |")
            continue
        rps = s.median("rps")
        ratio = f"**{rps / base_rps:.2f}**" if base_rps and s is not base else "1.00"
        errors = sum(r.wrk.errors + (r.warmup.errors if r.warmup else 0) for r in s.runs)
        lines.append(
            f"| {s.label} | **{rps:,.0f}** | {pb.fmt_us(s.median('50'))} | "
            f"{pb.fmt_us(s.median('99'))} | {errors} | {ratio} | "
            f"{_cpu(s, 'server')} | {_per_event(s)} | {_cpu(s, 'redis')} | {_cpu(s, 'target')} | "
            f"{_cpu(s, 'load')} | {_cpu(s, 'others', max)} | "
            f"{', '.join(f'{r.wrk.rps:,.0f}' for r in s.runs)} |"
        )
    lines += [
        "",
        "CPU: cores used during the measured run (median of runs; others: the largest: "
        "processes this benchmark did not start); per event: server CPU time / events "
        "accepted (median of runs). The router's CPU includes delivering to the target while "
        "it accepts; the baselines deliver nothing; `router-target-down` only accepts (its "
        "target refuses connections, its breaker opens): the accept path's own capacity.",
        "",
        "### Nothing accepted is lost",
        "",
        "| server | round | 2xx (wrk warmup + run + probe) | added to the stream | added - 2xx "
        "| delivered during the run | backlog at the end of the run | drained in "
        "| distinct delivered | duplicates | left in stream |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in b.servers:
        for r in s.runs:
            if s.name == "router":
                assert r.delivered_during_run is not None and r.drain_seconds is not None
                backlog = r.stream_len_after_run or 0
                drain_rate = backlog / r.drain_seconds if r.drain_seconds else 0
                tail = (
                    f"{r.delivered_during_run:,} ({r.delivered_during_run / a.duration:,.0f}/s)"
                    f" | {backlog:,} | {r.drain_seconds:.1f} s ({drain_rate:,.0f}/s) | "
                    f"{r.delivered:,} | {r.duplicates} | {r.left_in_stream} |"
                )
            elif s.name == "router-target-down":
                tail = f"0 | - | - | 0 | - | {r.left_in_stream:,} (all runs so far) |"
            else:
                tail = "- | - | - | - | - | - |"
            lines.append(
                f"| {s.name} | {r.round} | {r.wrk_2xx + r.probe_ok:,} | {r.stored:,} | "
                f"{r.slack} | {tail}"
            )
    lines += [
        "",
        f"added - 2xx: requests answered after wrk stopped counting (at most {a.connections} "
        "per wrk run); negative would mean an event answered 200 and lost. Router: "
        "`XINFO STREAM` `entries-added`; distinct delivered = distinct event ids the target "
        "received, once the stream was empty again (delivered entries are XACKed and XDELed). "
        "router-target-down delivers nothing: its stream keeps every entry of every run "
        "(noisy runs done again included).",
    ]
    if b.final_checks:
        fc = b.final_checks
        m = b.router_metrics
        lines.append(
            f"At the end: stream length {fc['stream_len']}, pending {fc['pending']}, dead list "
            f"{fc['dead']}; router metrics: received {m.get('router_webhooks_received_total', 0):,.0f},"
            f" delivered {m.get('router_webhooks_delivered_total', 0):,.0f}, retried "
            f"{m.get('router_webhooks_retried_total', 0):,.0f}, dead "
            f"{m.get('router_webhooks_dead_total', 0):,.0f}; target: "
            f"{fc['target_distinct']:,} distinct events, {fc['target_duplicates']} duplicates."
        )
    lines += [
        "",
        "### Delivery latency to a healthy target (now - event `timestamp`, at the target)",
        "",
        "| load | posted | 2xx | HTTP p50 | HTTP p99 | delivered | delivery p50 | p90 | p99 "
        "| max | router CPU | router CPU per event | target CPU | client CPU | others CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    if b.paced:
        p = b.paced
        c, g, lat, cpu = p["client"], p["target"], p["target"]["latency_ms"], p["cpu"]
        lines.append(
            f"| paced {a.paced_rate:g} events/s x {a.paced_duration:g} s, {a.paced_sessions} "
            f"sessions, <= {a.paced_concurrency} in flight (achieved {c['achieved_rate']:,.0f}/s)"
            f" | {c['sent']:,} | {c['ok']:,} | {_ms(c['http_ms']['p50'])} | "
            f"{_ms(c['http_ms']['p99'])} | {g['unique']:,} | {_ms(lat['p50'])} | "
            f"{_ms(lat['p90'])} | **{_ms(lat['p99'])}** | {_ms(lat['max'])} | "
            f"{pb.fmt_pct(cpu['server'])} | {cpu['server'] / a.paced_rate * 1e6:.0f} us | "
            f"{pb.fmt_pct(cpu['target'])} | {pb.fmt_pct(cpu['load'])} | "
            f"{pb.fmt_pct(cpu['others'])} |"
        )
    if router:
        for r in router.runs:
            c, lat = r.probe or {}, r.probe_latency_ms or {}
            if not c:
                continue
            lines.append(
                f"| probe {a.probe_rate:g} events/s during wrk saturation (round {r.round}) | "
                f"{c['sent']:,} | {c['ok']:,} | {_ms(c['http_ms']['p50'])} | "
                f"{_ms(c['http_ms']['p99'])} | {lat.get('n', 0):,} | {_ms(lat.get('p50'))} | "
                f"{_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {_ms(lat.get('max'))} | "
                f"{pb.fmt_pct(r.cpu['server'])} | "
                f"{r.cpu['server'] / r.wrk.rps * 1e6:.0f} us | {pb.fmt_pct(r.cpu['target'])} | "
                f"{pb.fmt_pct(r.cpu['load'])} (wrk + probe) | {pb.fmt_pct(r.cpu['others'])} |"
            )
    lines += [
        "",
        "Delivery latency: the event's `timestamp` (ms, set by the client right before the "
        "POST, as an instance does) to its arrival at the target: accept + store + read + "
        "deliver; 1 ms resolution (the timestamp is whole ms, so values read up to 1 ms high). "
        "Paced client: `" + shlex.join(b.paced["argv"]).replace(sys.executable, "python") + "`."
        if b.paced
        else "",
        "",
        "### Targets (issue 5)",
        "",
    ]
    if router:
        rps = router.median("rps")
        lines.append(
            f"- accepted >= {TARGET_RPS:,} events/s: {rps:,.0f} -> "
            f"{'met' if rps >= TARGET_RPS else 'MISSED'}"
        )
    if b.paced:
        p99 = b.paced["target"]["latency_ms"]["p99"]
        lines.append(
            f"- p99 delivery <= {TARGET_P99_MS:g} ms (paced {a.paced_rate:g}/s): "
            f"{_ms(p99)} -> {'met' if p99 <= TARGET_P99_MS else 'MISSED'}"
        )
    noisy = [f"{s.name} round {r.round} ({r.cpu['others']:.0%})" for s in b.servers
             for r in s.runs if r.cpu["others"] > NOISY]  # fmt: skip
    if b.paced and b.paced["cpu"]["others"] > NOISY:
        noisy.append(f"paced ({b.paced['cpu']['others']:.0%})")
    if noisy:
        lines += [
            "",
            f"**Noisy**: other processes used more than {NOISY:.0%} of a core during "
            f"{', '.join(noisy)} (the quietest of up to {1 + a.noisy_retries} attempts is "
            "kept): those numbers are lower / slower than on a quiet machine.",
        ]
    if b.failures:
        lines += ["", "### FAILURES", ""] + [f"- {f.splitlines()[0]}" for f in b.failures]
    return "\n".join(lines) + "\n"


def _sizes(b: Bench, group: str) -> str:
    with contextlib.suppress(Exception):
        lo, hi = b.target_stats()["groups"][group]["size"]
        return f"{lo}-{hi}"
    return "~400"


def _per_event(s: Server) -> str:
    return f"{statistics.median(r.cpu['server'] / r.wrk.rps * 1e6 for r in s.runs):.0f} us"


def _cpu(s: Server, which: str, agg: Any = statistics.median) -> str:
    return pb.fmt_pct(agg(r.cpu[which] for r in s.runs))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run (10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warmup before each (2)")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (64)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--wrk-sessions", type=int, default=10, help="sessions in the wrk bodies (10)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; medians (2)")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="subset of baseline (aiohttp, asyncio loop), baseline-uvloop, router, "
        "router-target-down (default: all)",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=50,
        help="events/s posted with fresh timestamps during the router's wrk run, "
        "for delivery latency under saturation (50; 0: off)",
    )
    p.add_argument("--paced-rate", type=float, default=1000, help="paced load events/s (1000)")
    p.add_argument("--paced-duration", type=float, default=10, help="paced load seconds (10)")
    p.add_argument("--paced-sessions", type=int, default=50, help="paced load sessions (50)")
    p.add_argument("--paced-concurrency", type=int, default=64, help="paced max in flight (64)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=180,
        help="max seconds to wait for the router to deliver its backlog (180)",
    )
    pb.add_quiet_args(p)
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR / "out")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or not names:
        p.error(f"--servers: a subset of {','.join(SERVERS)}")
    args.servers = [n for n in SERVERS if n in names]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HELPERS:
        return HELPERS[argv[0]](argv[1:])
    args = parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"FAIL: {tool} is not installed", file=sys.stderr)
            return 2
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="wa-router-webhook-bench-"))
    b = Bench(args, tmp)
    logs = [tmp / f"{n}.log" for n in (*SERVERS, "target")]
    logs += [tmp / f"redis-{n}.log" for n in SERVERS]
    try:
        with pb.signals_interrupt():
            info = machine_info()
            print(f"temp dir {tmp}; starting target, redis-servers, servers", file=sys.stderr)
            b.start()
            b.accept_rate()
            b.paced_run()
            b.final()
            report = render(b, info, started)
            print(report)
            args.out_dir.mkdir(parents=True, exist_ok=True)
            md = args.out_dir / f"webhook-{stamp}.md"
            md.write_text(report)
            raw = {
                "date": started.isoformat(),
                "command": [sys.executable, *sys.argv],
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": info,
                "servers": {
                    s.name: {
                        "label": s.label,
                        "median_rps": s.median("rps") if s.runs else None,
                        "runs": [asdict(r) for r in s.runs],
                        "discarded_noisy_runs": [asdict(r) for r in s.discarded],
                    }
                    for s in b.servers
                },
                "paced": b.paced,
                "paced_discarded_noisy": b.paced_discarded,
                "router_metrics": b.router_metrics,
                "final_checks": b.final_checks,
                "failures": b.failures,
            }
            (args.out_dir / f"webhook-{stamp}.json").write_text(json.dumps(raw, indent=2) + "\n")
            print(f"written: {md} and {md.with_suffix('.json')}", file=sys.stderr)
    except pb.BenchError as e:
        b.failures.append(str(e))
    except KeyboardInterrupt:
        b.failures.append("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        for s in b.servers:
            s.probe.close()
        code = pb.finish(b.procs, b.failures, logs, tmp, args.keep_tmp)
    return code


if __name__ == "__main__":
    sys.exit(main())
