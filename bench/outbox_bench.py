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
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib import BENCH_DIR, HOST, OUT_DIR, REPO
from bench.lib.configs import instance_url, redis_args, redis_url, router_yaml
from bench.lib.cpu import rss_kib
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


def wrk_rate(url: str, duration: float, sessions: int, prefix: str = "ob",
             not_before: float | None = None) -> dict[str, float]:
    """wrk -c64 POSTing sends for ``sessions`` sessions; with ``not_before`` (Unix seconds)
    the messages stay queued until then (enqueue measured alone)."""
    args = [str(sessions)] + ([] if not_before is None else [repr(not_before)])
    script = SCRIPT if prefix == "ob" else _prefixed_script(prefix)
    argv = [*wrk_base(64, duration), "-s", str(script), url, "--", *args]
    r, _ = run_wrk(argv, duration)
    return {"rps": round(r.rps, 1), "p99_ms": round(r.latency_us["99"] / 1000, 2),
            "p50_ms": round(r.latency_us["50"] / 1000, 2), "errors": r.non2xx,
            "requests": r.requests}


def _prefixed_script(prefix: str) -> Path:
    """The wrk script with sessions named ``<prefix>-N`` (a copy in the output folder)."""
    out = OUT_DIR / f"outbox-{prefix}.lua"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(SCRIPT.read_text().replace('"ob-', f'"{prefix}-'))
    return out


async def campaigns(base: str, batches: int, size: int, sessions: int,
                    not_before: float | None = None, prefix: str = "ob",
                    in_flight: int = 1) -> dict[str, float]:
    """``batches`` campaigns of ``size`` messages, one after another; the rate they were
    stored at (the bodies are built before the clock starts), and the bytes of the message
    bodies as stored (for memory per message beyond its body)."""
    payloads, body_bytes = [], 0
    for b in range(batches):
        items: list[dict[str, Any]] = [{"path": "/api/sendText", "body": {
            "session": f"{prefix}-{i % sessions + 1}", "chatId": "4915112345678@c.us",
            "text": f"Your order #{b}-{i} has shipped"}} for i in range(size)]
        if not_before is not None:
            for item in items:
                item["not_before"] = not_before
        body_bytes += sum(len(json.dumps(item["body"], separators=(",", ":"))) for item in items)
        payloads.append(json.dumps({"name": f"bench-{b}", "messages": items}).encode())
    async with aiohttp.ClientSession() as http:

        async def client(mine: list[bytes]) -> None:
            for raw in mine:
                async with http.post(base + "/outbox/campaigns", data=raw,
                                     headers={"Content-Type": "application/json"}) as resp:
                    assert resp.status == 202, await resp.text()

        t0 = time.perf_counter()
        # ``in_flight`` clients, each sending its share one call after another
        await asyncio.gather(*(client(payloads[k::in_flight]) for k in range(in_flight)))
        took = time.perf_counter() - t0
    return {"messages_per_s": round(batches * size / took, 1), "batches": batches, "size": size,
            "body_bytes": body_bytes, "in_flight": in_flight}


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


async def queued(admin: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(admin + "/admin/outbox") as resp:
        return int((await resp.json())["totals"]["queued"])


async def drained(admin: str, keep: int = 0, timeout: float = 600) -> float:
    """Wait until nothing is sending and only ``keep`` messages (scheduled for later) are
    queued; how long it took."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(admin + "/admin/outbox") as resp:
                totals = (await resp.json())["totals"]
            if totals["queued"] <= keep and totals["sending"] == 0:
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


async def sent_rate(sims: list[int], seconds: float) -> float:
    """Sends per second the sims received over ``seconds`` (from their first one on)."""
    async with aiohttp.ClientSession() as http:
        before, t0 = await sent_total(http, sims), time.perf_counter()
        while await sent_total(http, sims) == before:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("no sends within 600 s")
            await asyncio.sleep(0.05)
        start, t0 = await sent_total(http, sims), time.perf_counter()
        await asyncio.sleep(seconds)
        end, took = await sent_total(http, sims), time.perf_counter() - t0
    return round((end - start) / took, 1)


def redis_memory(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True,
                         text=True, check=True).stdout
    return int(next(line.split(":")[1] for line in out.splitlines() if line.startswith("used_memory:")))


def million(base: str, admin: str, sims: list[int], rport: int, router_pid: int, args: argparse.Namespace,
            deferred_rate: float, dispatch_rate: float) -> dict[str, Any]:
    """``--million N``: N messages queued (scheduled a little later, so they stay queued
    while measured), then Redis memory per message beyond its body, router RSS growth, and
    the enqueue and dispatch rates at that depth against the shallow figures."""
    n = args.million
    batches = n // 10_000
    asyncio.run(drained(admin, keep=asyncio.run(queued(admin))))
    mem0, rss0 = redis_memory(rport), rss_kib(router_pid)
    due = time.time() + n / 15_000 + 2 * args.duration + 30  # after the enqueue steps
    stored = asyncio.run(campaigns(base, batches, 10_000, args.sessions, not_before=due))
    mem1, rss1 = redis_memory(rport), rss_kib(router_pid)
    deep = wrk_rate(base + "/outbox/api/sendText", args.duration, args.sessions, prefix="eq",
                    not_before=time.time() + 86400)
    late = time.time() > due
    time.sleep(max(0.0, due - time.time()))
    rate = asyncio.run(sent_rate(sims, args.duration * 2))
    per = (mem1 - mem0 - stored["body_bytes"]) / (batches * 10_000)
    return {"messages": batches * 10_000, "campaign_messages_per_s": stored["messages_per_s"],
            "redis_bytes": mem1 - mem0, "body_bytes": stored["body_bytes"],
            "redis_bytes_per_message_beyond_body": round(per, 1),
            "router_rss_growth_mib": round((rss1 - rss0) / 1024, 1),
            "enqueue": deep, "enqueue_vs_shallow": round(deep["rps"] / deferred_rate, 3),
            "dispatch_messages_per_s": rate, "dispatch_vs_shallow": round(rate / dispatch_rate, 3),
            "dispatch_started_during_enqueue": late}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--dispatch", type=int, default=10_000)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--million", type=int, default=0, metavar="N",
                   help="also queue N messages (1000000) and measure memory and rates at that depth")
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
        router = procs.start("router", router_argv(conf), tmp / "router.log", cwd=REPO)
        wait_http(procs, port, "/healthz", "router")
        base, admin_url = f"http://{HOST}:{port}", f"http://{HOST}:{admin}"
        asyncio.run(place(base, args.sessions))
        bport = free_port()
        procs.start("baseline", module_argv("bench.webhook_peers", "_baseline", "--port", str(bport),
                                            "--redis-port", str(rport)), tmp / "baseline.log", cwd=REPO)
        wait_http(procs, bport, "/healthz", "baseline")
        rounds: list[dict[str, Any]] = []
        later = time.time() + 86400  # enqueue alone: these stay queued (sessions eq-N, unplaced)
        for _ in range(2):  # interleaved: the machine's speed drifts
            b = wrk_rate(f"http://{HOST}:{bport}/webhooks", args.duration, args.sessions)
            r = wrk_rate(base + "/outbox/api/sendText", args.duration, args.sessions, prefix="eq",
                         not_before=later)
            rounds.append({"baseline": b, "router": r, "ratio": round(r["rps"] / b["rps"], 3)})
        results["enqueue"] = rounds
        # Stored alone too: scheduled for later, for sessions not placed (cq-N).
        results["campaigns"] = asyncio.run(campaigns(base, args.batches, 10_000, args.sessions,
                                                     not_before=later, prefix="cq"))
        results["campaigns_2"] = asyncio.run(campaigns(base, args.batches * 2, 10_000, args.sessions,
                                                       not_before=later, prefix="cq", in_flight=2))
        keep = asyncio.run(queued(admin_url))
        busy = wrk_rate(base + "/outbox/api/sendText", args.duration, args.sessions)
        results["enqueue_while_dispatching"] = busy
        asyncio.run(drained(admin_url, keep))
        results["dispatch"] = asyncio.run(dispatch(base, sims, args.sessions, args.dispatch))
        results["direct"] = asyncio.run(direct(sims, args.sessions, args.dispatch))
        results["dispatch_ratio"] = round(results["dispatch"]["messages_per_s"]
                                          / results["direct"]["messages_per_s"], 3)
        if args.million:
            shallow = sum(e["router"]["rps"] for e in rounds) / len(rounds)
            results["million"] = million(base, admin_url, sims, rport, router.pid, args, shallow,
                                         results["dispatch"]["messages_per_s"])
    finally:
        problems = procs.stop_all()
    md = markdown(results)
    print(md)
    write_report(args.out_dir, "outbox", md, results, started, args, info)
    return 1 if problems else 0


def markdown(r: dict[str, Any]) -> str:
    lines = ["## Outbox", "", "| figure | router | baseline | ratio |", "| --- | ---: | ---: | ---: |"]
    for i, e in enumerate(r.get("enqueue", []), 1):
        lines.append(f"| enqueue alone, round {i}: messages/s (p99) | {e['router']['rps']:,.0f} "
                     f"({e['router']['p99_ms']} ms) | {e['baseline']['rps']:,.0f} "
                     f"({e['baseline']['p99_ms']} ms, aiohttp + XADD) | {e['ratio']:.2f} |")
    if "enqueue_while_dispatching" in r:
        e = r["enqueue_while_dispatching"]
        lines.append(f"| enqueue while dispatching them (pacing off): messages/s (p99) | {e['rps']:,.0f} "
                     f"({e['p99_ms']} ms) | - | - |")
    if "campaigns" in r:
        lines.append(f"| campaign batches of 10,000, one after another: messages/s stored "
                     f"| {r['campaigns']['messages_per_s']:,.0f} | - | - |")
    if "campaigns_2" in r:
        lines.append(f"| campaign batches of 10,000, two clients at once: messages/s stored "
                     f"| {r['campaigns_2']['messages_per_s']:,.0f} | - | - |")
    if "dispatch" in r:
        lines.append(f"| dispatch, pacing off: messages/s sent | {r['dispatch']['messages_per_s']:,.0f} "
                     f"| {r['direct']['messages_per_s']:,.0f} (asyncio client straight to the sims) "
                     f"| {r['dispatch_ratio']:.2f} |")
    m: dict[str, Any] | None = r.get("million")
    if m:
        lines += ["", f"With {m['messages']:,} messages queued:", "",
                  "| figure | value |", "| --- | ---: |",
                  f"| campaign batches: messages/s stored | {m['campaign_messages_per_s']:,.0f} |",
                  f"| Redis memory per message beyond its body | {m['redis_bytes_per_message_beyond_body']:.0f} B "
                  f"({m['redis_bytes'] / 2**20:,.0f} MiB for {m['body_bytes'] / 2**20:,.0f} MiB of bodies) |",
                  f"| router RSS growth | {m['router_rss_growth_mib']} MiB |",
                  f"| enqueue alone at that depth: messages/s (p99) | {m['enqueue']['rps']:,.0f} "
                  f"({m['enqueue']['p99_ms']} ms): {m['enqueue_vs_shallow']:.2f}x the shallow figure |",
                  f"| dispatch at that depth: messages/s | {m['dispatch_messages_per_s']:,.0f}: "
                  f"{m['dispatch_vs_shallow']:.2f}x the 10,000-message figure"
                  + (" (started before the enqueue ended)" if m["dispatch_started_during_enqueue"] else "") + " |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
