"""The outbox's speed, side by side with baselines in one run (issue 16):

- enqueue: single sends queued through the router with Redis (AOF everysec), wrk -c64,
  against the naive baseline of one aiohttp handler doing one XADD per request;
- campaigns: 10,000-message batches stored per second;
- dispatch: messages sent by the router with pacing off, across SESSIONS sessions and 3 sims,
  against a plain asyncio client posting the same sends straight to the sims.

    python bench/outbox_bench.py [--duration 8] [--sessions 1000] [--dispatch 10000]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    import os
    import sys
    from pathlib import Path

    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib import BENCH_DIR, HOST, OUT_DIR, REPO
from bench.lib.configs import instance_url, redis_args, redis_url, router_yaml
from bench.lib.ports import free_port
from bench.lib.procs import Processes, module_argv, router_argv, wait_http, wait_redis
from bench.lib.report import machine_info, write_report
from bench.lib.wrk import run_wrk, wrk_base

SCRIPT = BENCH_DIR / "wrk" / "outbox.lua"
PACING_OFF = """
outbox:
  delay: {min: 0s, max: 0s}
  limits: {per_minute: 0, per_hour: 0, per_day: 0}
log: {level: WARNING}
"""


def wrk_rate(url: str, duration: float, sessions: int) -> dict[str, float]:
    argv = [*wrk_base(64, duration), "-s", str(SCRIPT), url, "--", str(sessions)]
    r, _ = run_wrk(argv, duration)
    return {"rps": round(r.rps, 1), "p99_ms": round(r.latency_us["99"] / 1000, 2),
            "p50_ms": round(r.latency_us["50"] / 1000, 2), "errors": r.non2xx}


async def campaigns(base: str, batches: int, size: int, sessions: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        for b in range(batches):
            body = {"name": f"bench-{b}", "messages": [
                {"path": "/api/sendText", "body": {"session": f"ob-{i % sessions + 1}", "chatId": "1@c.us", "text": f"{b}-{i}"}}
                for i in range(size)]}
            async with http.post(base + "/outbox/campaigns", json=body) as resp:
                assert resp.status == 202, await resp.text()
        took = time.perf_counter() - t0
    return {"messages_per_s": round(batches * size / took, 1), "batches": batches, "size": size}


async def sent_total(http: aiohttp.ClientSession, sims: list[int]) -> int:
    n = 0
    for port in sims:
        async with http.get(f"http://{HOST}:{port}/sim/stats") as resp:
            stats = await resp.json()
            n += int(stats.get("requests", {}).get("POST /api/sendText", 0))
    return n


async def place(base: str, sessions: int) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(1, sessions + 1):
            async with http.post(base + "/api/sessions", json={"name": f"ob-{i}"}) as resp:
                assert resp.status == 201, await resp.text()


async def drained(admin: str, timeout: float = 600) -> float:
    """Wait until nothing is queued or sending; how long it took."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(admin + "/admin/outbox") as resp:
                totals = (await resp.json())["totals"]
            if totals["queued"] + totals["sending"] == 0:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the outbox did not drain in {timeout:.0f} s: {totals}")
            await asyncio.sleep(0.2)


async def dispatch(base: str, sims: list[int], sessions: int, total: int) -> dict[str, float]:
    """Queue ``total`` messages over the (placed) sessions; time until the sims have them all."""
    async with aiohttp.ClientSession() as http:
        before = await sent_total(http, sims)
        per = total // sessions
        t0 = time.perf_counter()
        for start in range(0, total, 10_000):
            body = {"name": "dispatch", "messages": [
                {"path": "/api/sendText", "body": {"session": f"ob-{i % sessions + 1}", "chatId": "1@c.us", "text": str(i)}}
                for i in range(start, min(total, start + 10_000))]}
            async with http.post(base + "/outbox/campaigns", json=body) as resp:
                assert resp.status == 202
        while await sent_total(http, sims) - before < per * sessions:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("dispatch did not finish in 600 s")
            await asyncio.sleep(0.2)
        took = time.perf_counter() - t0
    return {"messages_per_s": round(total / took, 1), "seconds": round(took, 2)}


async def direct(sims: list[int], sessions: int, total: int) -> dict[str, float]:
    """The baseline: the same sends posted straight to the sims, 64 at a time."""
    sem = asyncio.Semaphore(64)
    conn = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=conn) as http:
        owner: dict[str, int] = {}
        for port in sims:
            async with http.get(f"http://{HOST}:{port}/api/sessions") as resp:
                for s in await resp.json():
                    owner[s["name"]] = port

        async def one(i: int) -> None:
            s = f"ob-{i % sessions + 1}"
            async with sem, http.post(f"http://{HOST}:{owner[s]}/api/sendText",
                                      json={"session": s, "chatId": "1@c.us", "text": str(i)}) as resp:
                assert resp.status == 201

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        took = time.perf_counter() - t0
    return {"messages_per_s": round(total / took, 1), "seconds": round(took, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--dispatch", type=int, default=10_000)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    info = machine_info()
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    results: dict[str, Any] = {"command": " ".join(["python bench/outbox_bench.py", *(argv or sys.argv[1:])])}
    try:
        rport = free_port()
        procs.start("redis", [*redis_args(tmp / "redis", rport), "--appendfsync", "everysec"], tmp / "redis.log")
        wait_redis(procs, rport)
        sims = [free_port() for _ in range(3)]
        for i, port in enumerate(sims):
            procs.start(f"sim-{i}", module_argv("router", "sim", "--host", HOST, "--port", str(port),
                                                 "--name", f"node-{i + 1}"), tmp / f"sim{i}.log", cwd=REPO)
            wait_http(procs, port, "/ping", f"sim {i}")
        port, admin = free_port(), free_port()
        conf = tmp / "router.yaml"
        conf.write_text(router_yaml(port, admin, [(f"node-{i + 1}", instance_url(s)) for i, s in enumerate(sims)],
                                    store_url=redis_url(rport), extra=PACING_OFF))
        procs.start("router", router_argv(conf), tmp / "router.log", cwd=REPO)
        wait_http(procs, port, "/healthz", "router")
        base, admin_url = f"http://{HOST}:{port}", f"http://{HOST}:{admin}"
        asyncio.run(place(base, args.sessions))
        bport = free_port()
        procs.start("baseline", module_argv("bench.webhook_peers", "_baseline", "--port", str(bport),
                                            "--redis-port", str(rport)), tmp / "baseline.log", cwd=REPO)
        wait_http(procs, bport, "/healthz", "baseline")
        rounds = []
        for _ in range(2):  # interleaved: the machine's speed drifts
            b = wrk_rate(f"http://{HOST}:{bport}/webhooks", args.duration, args.sessions)
            r = wrk_rate(base + "/outbox/api/sendText", args.duration, args.sessions)
            rounds.append({"baseline": b, "router": r, "ratio": round(r["rps"] / b["rps"], 3)})
            asyncio.run(drained(admin_url))  # what was queued goes out before the next run
        results["enqueue"] = rounds
        results["campaigns"] = asyncio.run(campaigns(base, args.batches, 10_000, args.sessions))
        asyncio.run(drained(admin_url))
        results["dispatch"] = asyncio.run(dispatch(base, sims, args.sessions, args.dispatch))
        results["direct"] = asyncio.run(direct(sims, args.sessions, args.dispatch))
        results["dispatch_ratio"] = round(results["dispatch"]["messages_per_s"]
                                          / results["direct"]["messages_per_s"], 3)
    finally:
        problems = procs.stop_all()
    md = markdown(results)
    print(md)
    write_report(args.out_dir, "outbox", md, results, started, args, info)
    return 1 if problems else 0


def markdown(r: dict[str, Any]) -> str:
    lines = ["## Outbox", "", "| figure | router | baseline | ratio |", "| --- | ---: | ---: | ---: |"]
    for i, e in enumerate(r.get("enqueue", []), 1):
        lines.append(f"| enqueue, round {i}: messages/s (p99) | {e['router']['rps']:,.0f} "
                     f"({e['router']['p99_ms']} ms) | {e['baseline']['rps']:,.0f} "
                     f"({e['baseline']['p99_ms']} ms, aiohttp + XADD) | {e['ratio']:.2f} |")
    if "campaigns" in r:
        lines.append(f"| campaign batches of 10,000: messages/s stored | {r['campaigns']['messages_per_s']:,.0f} | - | - |")
    if "dispatch" in r:
        lines.append(f"| dispatch, pacing off: messages/s sent | {r['dispatch']['messages_per_s']:,.0f} "
                     f"| {r['direct']['messages_per_s']:,.0f} (asyncio client straight to the sims) "
                     f"| {r['dispatch_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
