"""Redis store at scale: bulk load time, RSS and cached lookup cost of a fresh router.

    /work/venv/bin/python bench/store_bench.py [--sessions 100000] [--instances 200]
        [--lookups 1000000] [--repeats 3] [--no-router] [--router-repeats 2]

Needs only ``redis-server`` on the PATH and the venv (redis-py, uvloop); everything runs on
127.0.0.1, in a temp dir that is removed at the end.

1. starts its own redis-server on a free loopback port (``--save ""``, no AOF: nothing
   here needs durability), in its own process group, stopped in a ``finally``;
2. seeds the map the way the store's scripts write it (``P assignments`` hash with
   ``instance:epoch`` values, ``P counts``, ``P epoch``) with pipelined multi-field HSETs;
3. runs a fresh Python process that imports the store, notes its RSS, starts a
   ``RedisStore`` (subscribe + HSCAN bulk load), notes the load time and RSS, then
   times ``cached()`` on random known sessions and counts the Redis commands those lookups
   caused (``INFO commandstats``; must be 0);
4. unless ``--no-router``: starts the real router (``python -m router run``, the same
   instances, Redis store) on the seeded map and on an empty prefix, alternately
   (``--router-repeats`` times each, the fastest start kept), and notes the time until
   ``/healthz`` answers (the store is loaded before the proxy port opens), its RSS, and
   the ``router_sessions`` it reports on ``/metrics``: the difference between the two is
   what loading the map costs a whole router process;
5. prints a markdown table. Targets (issue 3): load <= 3 s, RSS <= 150 MB, lookup <= 2 us.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import OUT_DIR, REPO
from bench.lib.configs import instance_url, redis_args, redis_url, router_yaml
from bench.lib.cpu import rss_kib
from bench.lib.ports import free_ports
from bench.lib.procs import (
    BenchError,
    Processes,
    http_get,
    module_argv,
    router_argv,
    tail,
    wait_redis,
)
from bench.lib.report import command_line, git_state, version_of, write_report

PREFIX = "bench:"
EMPTY_PREFIX = "bench-empty:"  # nothing under it: a router with an empty map


def rss_mib(pid: int | str = "self") -> float:
    """VmRSS of ``pid`` in MiB."""
    return rss_kib(pid) / 1024


def instance_names(instances: int) -> list[str]:
    return [f"node-{i:03d}" for i in range(instances)]


def start_redis(procs: Processes, tmp: Path) -> int:
    """A redis-server without AOF (nothing here needs durability); its port."""
    (port,) = free_ports(1)
    argv = redis_args(tmp / "redis", port, appendonly=False)
    procs.start("redis-server", argv, tmp / "redis.log")
    wait_redis(procs, port, timeout=10)
    return port


# --------------------------------------------------------------------------- seeding


async def seed(url: str, sessions: int, instances: int) -> float:
    from redis.asyncio import Redis
    from redis.typing import EncodableT, FieldT

    rng = random.Random(42)
    names = instance_names(instances)
    counts: dict[str, int] = dict.fromkeys(names, 0)
    start = time.perf_counter()
    async with Redis.from_url(url, decode_responses=True) as r:
        await r.delete(PREFIX + "assignments", PREFIX + "counts", PREFIX + "epoch")
        async with r.pipeline(transaction=False) as pipe:
            batch: dict[FieldT, EncodableT] = {}  # redis-py's key and value types
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
        "store_module": sys.modules[RedisStore.__module__].__file__,
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


# --------------------------------------------------------------------------- full router


def router_conf(redis_port: int, prefix: str, instances: int, ports: list[int]) -> str:
    """The router on the seeded map (``prefix``), with ``instances`` on a closed port."""
    # The instances' ports are closed (nothing listens): health checks fail at once, which
    # is fine, the store is what is measured. A long interval keeps the process quiet, and
    # the figures are read within ~1 s of the start, long before the failover grace (5 s)
    # and a second failed check (60 s) could make the leader move anything.
    return router_yaml(
        ports[0], ports[1], [(n, instance_url(ports[2])) for n in instance_names(instances)],
        profile="generic", log_level="WARNING", store_url=redis_url(redis_port),
        store_prefix=prefix, extra="health: {interval: 60s}\n",
    )  # fmt: skip


def get_text(port: int, path: str) -> tuple[int, str]:
    """GET ``path``: status and body (0 and "" when nothing answers)."""
    try:
        status, _, body = http_get(port, path)
    except OSError:
        return 0, ""
    return status, body.decode(errors="replace")


def run_router(tmp: Path, redis_port: int, prefix: str, instances: int) -> dict[str, Any]:
    """Start ``python -m router run``; time until /healthz, RSS, router_sessions."""
    name = "router-" + prefix.rstrip(":")
    ports = free_ports(3)
    conf = tmp / f"{name}.yaml"
    conf.write_text(router_conf(redis_port, prefix, instances, ports))
    procs = Processes()
    t0 = time.perf_counter()
    proc = procs.start(name, router_argv(conf), tmp / f"{name}.log", cwd=REPO)
    try:
        deadline = t0 + 60
        while True:
            procs.check_alive()
            if get_text(ports[0], "/healthz")[0] == 200:
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"router: /healthz not 200 after 60 s:\n{tail(proc.log)}")
            time.sleep(0.01)
        ready_s = time.perf_counter() - t0
        time.sleep(0.5)  # let start-up garbage settle before reading RSS
        rss = rss_mib(proc.pid)
        status, metrics = get_text(ports[1], "/metrics")
        m = re.search(r"^router_sessions (\S+)$", metrics, re.M)
        if status != 200 or m is None:
            raise BenchError(f"router: /metrics HTTP {status}, no router_sessions")
        return {"healthz_s": ready_s, "rss_mib": rss, "sessions": int(float(m.group(1)))}
    finally:
        procs.stop_all()


def git_version() -> str:
    commit, dirty = git_state()
    return f"git {commit[:7]}{', router/ modified' if dirty else ''}"


def redis_version() -> str:
    return version_of(["redis-server", "--version"]).split(" sha=")[0]


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-router", action="store_true", help="skip the full-router measurement")
    ap.add_argument("--router-repeats", type=int, default=2, help="router starts of each kind (2)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR, help="bench/out")
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

    started = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    procs = Processes()
    routers: dict[str, dict[str, Any]] = {}
    try:
        port = start_redis(procs, tmp)
        url = redis_url(port)
        seed_s = asyncio.run(seed(url, args.sessions, args.instances))
        done = subprocess.run(
            module_argv(
                "bench.store_bench",
                "--child",
                url,
                "--lookups",
                str(args.lookups),
                "--repeats",
                str(args.repeats),
            ),
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        if done.returncode != 0:
            print(
                f"FAIL: the measured process exited with {done.returncode}:\n{done.stderr}",
                file=sys.stderr,
            )
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if not args.no_router:
            # Alternated, best start time of each kept (start-up time is noisy: imports).
            for _ in range(args.router_repeats):
                for key, prefix in (("empty", EMPTY_PREFIX), ("full", PREFIX)):
                    got = run_router(tmp, port, prefix, args.instances)
                    best = routers.setdefault(key, got)
                    if got["healthz_s"] < best["healthz_s"]:
                        routers[key] = got
    except BenchError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    ok = {
        "load": r["load_s"] <= 3.0,
        "rss": r["rss_after_mib"] <= 150,
        "lookup": r["lookup_hit_ns"] <= 2000,
        "commands": not r["redis_commands_during_lookups"],
        "loaded": r["sessions_loaded"] == args.sessions,
    }
    if routers:
        full, empty = routers["full"], routers["empty"]
        ok["router_rss"] = full["rss_mib"] <= 150
        ok["router_load"] = full["healthz_s"] - empty["healthz_s"] <= 3.0
        ok["router_sessions"] = full["sessions"] == args.sessions and empty["sessions"] == 0

    def mark(key: str) -> str:
        return "ok" if ok[key] else "MISSED"

    lines: list[str] = []

    def out(text: str) -> None:
        lines.append(text)

    out(
        f"## Redis store at scale: {r['sessions_loaded']:,} sessions over {r['instances']} instances\n"
    )
    out(f"- command: `{command_line()}`")
    out(
        f"- seeded in {seed_s:.2f} s (pipelined HSET, 5,000 fields each) into a fresh redis-server on loopback"
    )
    out(
        "- store process: a fresh Python process with uvloop, redis-py + hiredis and `RedisStore` only"
    )
    out(
        f"- wa-router: {git_version()} ({r['store_module']}); {os.cpu_count()} CPUs; {redis_version()}\n"
    )
    out("| figure | value | target |")
    out("| --- | --- | --- |")
    out(
        f"| bulk load (subscribe + HSCAN COUNT 10000), store process | {r['load_s']:.2f} s | <= 3 s {mark('load')} |"
    )
    out(
        f"| RSS after load, store process | {r['rss_after_mib']:.1f} MiB (before the store: {r['rss_before_mib']:.1f}, "
        f"growth {r['rss_after_mib'] - r['rss_before_mib']:.1f}) | <= 150 MB {mark('rss')} |"
    )
    if routers:
        full, empty = routers["full"], routers["empty"]
        out(
            f"| full router (`python -m router run`, {args.instances} instances): start to /healthz, best of {args.router_repeats} | "
            f"{full['healthz_s']:.2f} s with {full['sessions']:,} sessions, {empty['healthz_s']:.2f} s with "
            f"{empty['sessions']} (load: +{full['healthz_s'] - empty['healthz_s']:.2f} s) | <= 3 s {mark('router_load')} |"
        )
        out(
            f"| full router RSS after start | {full['rss_mib']:.1f} MiB with {full['sessions']:,} sessions, "
            f"{empty['rss_mib']:.1f} MiB with {empty['sessions']} (+{full['rss_mib'] - empty['rss_mib']:.1f}) "
            f"| <= 150 MB {mark('router_rss')} |"
        )
    out(
        f"| cached() hit, per lookup | {r['lookup_hit_ns']:.0f} ns (loop alone {r['loop_overhead_ns']:.0f} ns) "
        f"| <= 2 us {mark('lookup')} |"
    )
    out(f"| cached() miss, per lookup | {r['lookup_miss_ns']:.0f} ns | |")
    out(f"| await get() on a cached session | {r['get_hit_ns']:.0f} ns | |")
    out(
        f"| Redis commands caused by {args.lookups * args.repeats * 2 + 1000:,} lookups | "
        f"{sum(r['redis_commands_during_lookups'].values())} | 0 {mark('commands')} |"
    )
    out(
        "\nLookups: best of the repeats, random known (hit) or unknown (miss) session ids, "
        "loop overhead included; commands counted with `INFO commandstats` after `CONFIG RESETSTAT`."
    )
    failed = [k for k, v in ok.items() if not v]
    if failed:
        out(f"\n**MISSED**: {', '.join(failed)}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    raw = {"seed_s": seed_s, "store_process": r, "router": routers, "ok": ok}
    stamp = started.strftime("%Y%m%d-%H%M%S")
    info = {"wa-router": git_version(), "redis": redis_version(), "nproc": str(os.cpu_count())}
    write_report(args.out_dir, f"store-{stamp}", report, raw, started, args, info)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
