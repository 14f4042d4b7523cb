"""Redis store at scale: bulk load time, RSS and cached lookup cost of a fresh router.

    /work/venv/bin/python bench/store_bench.py [--sessions 100000] [--instances 200]
        [--lookups 1000000] [--repeats 3]

1. starts a redis-server on a free loopback port, in a temp dir (removed at the end);
2. seeds the map the way the store's scripts write it (``P assignments`` hash with
   ``instance:epoch`` values, ``P counts``, ``P epoch``) with pipelined multi-field HSETs;
3. runs a fresh Python process (the "router") that imports the store, notes its RSS,
   starts a ``RedisStore`` (subscribe + HSCAN bulk load), notes the load time and RSS, then
   times ``cached()`` on random known sessions and counts the Redis commands those lookups
   caused (``INFO commandstats``; must be 0);
4. prints a markdown table. Targets (issue 3): load <= 3 s, RSS <= 150 MB, lookup <= 2 us.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "bench:"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def seed(url: str, sessions: int, instances: int) -> float:
    from redis.asyncio import Redis

    rng = random.Random(42)
    names = [f"node-{i:03d}" for i in range(instances)]
    counts: dict[str, int] = dict.fromkeys(names, 0)
    start = time.perf_counter()
    async with Redis.from_url(url, decode_responses=True) as r:
        await r.delete(PREFIX + "assignments", PREFIX + "counts", PREFIX + "epoch")
        async with r.pipeline(transaction=False) as pipe:
            batch: dict[str, str] = {}
            for i in range(sessions):
                name = names[rng.randrange(instances)]
                counts[name] += 1
                batch[f"session-{i:07d}"] = f"{name}:{i + 1}"
                if len(batch) == 5000:
                    pipe.hset(PREFIX + "assignments", mapping=batch)
                    batch = {}
            if batch:
                pipe.hset(PREFIX + "assignments", mapping=batch)
            pipe.hset(PREFIX + "counts", mapping={k: v for k, v in counts.items() if v})
            pipe.set(PREFIX + "epoch", sessions)
            await pipe.execute()
        assert await r.hlen(PREFIX + "assignments") == sessions
    return time.perf_counter() - start


async def child(url: str, lookups: int, repeats: int) -> dict[str, Any]:
    """The measured process: nothing but the store in it."""
    from redis.asyncio import Redis

    from router.store.redis import RedisStore

    rss_before = rss_mib()
    store = RedisStore(url, PREFIX)
    start = time.perf_counter()
    await store.start()
    load_s = time.perf_counter() - start
    rss_after = rss_mib()
    n = len(store)

    rng = random.Random(1)
    keys = [f"session-{rng.randrange(n):07d}" for _ in range(lookups)]
    misses = [f"absent-{i}" for i in range(lookups)]
    async with Redis.from_url(url, decode_responses=True) as r:
        await r.config_resetstat()
        cached = store.cached
        hit_ns, miss_ns, loop_ns = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            for s in keys:
                cached(s)
            hit_ns.append((time.perf_counter() - t) / lookups * 1e9)
            t = time.perf_counter()
            for s in misses:
                cached(s)
            miss_ns.append((time.perf_counter() - t) / lookups * 1e9)
            t = time.perf_counter()
            for _s in keys:
                pass
            loop_ns.append((time.perf_counter() - t) / lookups * 1e9)
        assert all(cached(s) is not None for s in keys[:1000])
        t = time.perf_counter()
        for _ in range(1000):
            await store.get(keys[0])  # a cache hit: no I/O either
        get_ns = (time.perf_counter() - t) / 1000 * 1e9
        stats = await r.info("commandstats")
    commands = {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_info", "cmdstat_config|resetstat")
    }
    counts = store.counts()
    await store.close()
    return {
        "sessions_loaded": n,
        "instances": len(counts),
        "load_s": load_s,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "lookup_hit_ns": min(hit_ns),
        "lookup_miss_ns": min(miss_ns),
        "loop_overhead_ns": min(loop_ns),
        "get_hit_ns": get_ns,
        "redis_commands_during_lookups": commands,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        try:
            import uvloop  # the router's event loop

            result = uvloop.run(child(args.child, args.lookups, args.repeats))
        except ImportError:
            result = asyncio.run(child(args.child, args.lookups, args.repeats))
        print(json.dumps(result))
        return 0

    from tests.redis_server import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    server = RedisServer(tmp, appendonly=False)
    try:
        server.start()
        seed_s = asyncio.run(seed(server.url, args.sessions, args.instances))
        out = subprocess.run(
            [sys.executable, __file__, "--child", server.url, "--lookups", str(args.lookups), "--repeats", str(args.repeats)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    ok = {
        "load": r["load_s"] <= 3.0,
        "rss": r["rss_after_mib"] <= 150,
        "lookup": r["lookup_hit_ns"] <= 2000,
        "commands": not r["redis_commands_during_lookups"],
    }
    print(f"Redis store, {r['sessions_loaded']:,} sessions over {r['instances']} instances "
          f"(seeded in {seed_s:.2f} s, pipelined HSET)\n")
    print("| figure | value | target |")
    print("| --- | --- | --- |")
    print(f"| bulk load (subscribe + HSCAN COUNT 10000) | {r['load_s']:.2f} s | <= 3 s {'ok' if ok['load'] else 'MISSED'} |")
    print(f"| RSS after load | {r['rss_after_mib']:.1f} MiB (before the store: {r['rss_before_mib']:.1f}, "
          f"growth {r['rss_after_mib'] - r['rss_before_mib']:.1f}) | <= 150 MB {'ok' if ok['rss'] else 'MISSED'} |")
    print(f"| cached() hit, per lookup | {r['lookup_hit_ns']:.0f} ns (loop alone {r['loop_overhead_ns']:.0f} ns) "
          f"| <= 2 us {'ok' if ok['lookup'] else 'MISSED'} |")
    print(f"| cached() miss, per lookup | {r['lookup_miss_ns']:.0f} ns | |")
    print(f"| await get() on a cached session | {r['get_hit_ns']:.0f} ns | |")
    print(f"| Redis commands caused by {args.lookups * args.repeats * 2 + 1000:,} lookups | "
          f"{sum(r['redis_commands_during_lookups'].values())} | 0 {'ok' if ok['commands'] else 'MISSED'} |")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
