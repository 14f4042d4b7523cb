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
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's router, whatever the venv has installed

HOST = "127.0.0.1"
PREFIX = "bench:"
EMPTY_PREFIX = "bench-empty:"  # nothing under it: a router with an empty map


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def instance_names(instances: int) -> list[str]:
    return [f"node-{i:03d}" for i in range(instances)]


def free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- processes


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group we started (``start_new_session``), SIGKILL if needed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("FAIL: redis-server is not installed (apt-get install redis-server)")
    (port,) = free_ports(1)
    data = tmp / "redis"
    data.mkdir()
    log = data / "redis.log"
    argv = [
        redis_server,
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(data),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(log),
        "--unixsocket", "",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.02)
    stop_group(proc)
    raise RuntimeError(f"redis-server on port {port}: no PONG within 10 s:\n{tail(log)}")


# --------------------------------------------------------------------------- seeding


async def seed(url: str, sessions: int, instances: int) -> float:
    from redis.asyncio import Redis

    rng = random.Random(42)
    names = instance_names(instances)
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
    # The instances' ports are closed (nothing listens): health checks fail at once, which
    # is fine, the store is what is measured. A long interval keeps the process quiet, and
    # the figures are read within ~1 s of the start, long before the failover grace (5 s)
    # and a second failed check (60 s) could make the leader move anything.
    lines = [
        f"listen: {{host: {HOST}, port: {ports[0]}}}",
        f"admin: {{host: {HOST}, port: {ports[1]}}}",
        "profile: generic",
        "log: {level: WARNING}",
        f'store: {{url: "redis://{HOST}:{redis_port}/0", prefix: "{prefix}"}}',
        "health: {interval: 60s}",
        "instances:",
    ]
    lines += [
        f"  - {{name: {n}, url: 'http://{HOST}:{ports[2]}'}}" for n in instance_names(instances)
    ]
    return "\n".join(lines) + "\n"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


def run_router(tmp: Path, redis_port: int, prefix: str, instances: int) -> dict[str, Any]:
    """Start ``python -m router run``; time until /healthz, RSS, router_sessions."""
    name = "router-" + prefix.rstrip(":")
    ports = free_ports(3)
    conf = tmp / f"{name}.yaml"
    conf.write_text(router_conf(redis_port, prefix, instances, ports))
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "run", "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = t0 + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"router exited with {proc.returncode}:\n{tail(log)}")
            if http_get(ports[0], "/healthz")[0] == 200:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"router: /healthz not 200 after 60 s:\n{tail(log)}")
            time.sleep(0.01)
        ready_s = time.perf_counter() - t0
        time.sleep(0.5)  # let start-up garbage settle before reading RSS
        rss = rss_mib(proc.pid)
        status, metrics = http_get(ports[1], "/metrics")
        m = re.search(r"^router_sessions (\S+)$", metrics, re.M)
        if status != 200 or m is None:
            raise RuntimeError(f"router: /metrics HTTP {status}, no router_sessions")
        return {"healthz_s": ready_s, "rss_mib": rss, "sessions": int(float(m.group(1)))}
    finally:
        stop_group(proc)


def _run_text(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def git_version() -> str:
    commit = _run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _run_text(["git", "-C", str(ROOT), "status", "--porcelain", "--", "router"])
    return f"git {commit}{', router/ modified' if dirty else ''}"


def redis_version() -> str:
    return _run_text(["redis-server", "--version"]).split(" sha=")[0] or "redis-server ?"


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
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out", help="bench/out")
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

    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    server: subprocess.Popen[bytes] | None = None
    routers: dict[str, dict[str, Any]] = {}
    try:
        server, port = start_redis(tmp)
        url = f"redis://{HOST}:{port}/0"
        seed_s = asyncio.run(seed(url, args.sessions, args.instances))
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                url,
                "--lookups",
                str(args.lookups),
                "--repeats",
                str(args.repeats),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if out.returncode != 0:
            print(
                f"FAIL: the measured process exited with {out.returncode}:\n{out.stderr}",
                file=sys.stderr,
            )
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if not args.no_router:
            # Alternated, best start time of each kept (start-up time is noisy: imports).
            for _ in range(args.router_repeats):
                for key, prefix in (("empty", EMPTY_PREFIX), ("full", PREFIX)):
                    got = run_router(tmp, port, prefix, args.instances)
                    best = routers.setdefault(key, got)
                    if got["healthz_s"] < best["healthz_s"]:
                        routers[key] = got
    except RuntimeError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            stop_group(server)
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
    out(f"- command: `{' '.join([sys.executable, *sys.argv])}`")
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
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (out_dir / f"store-{stamp}.md").write_text(report)
    raw = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seed_s": seed_s,
        "store_process": r,
        "router": routers,
        "ok": ok,
    }
    (out_dir / f"store-{stamp}.json").write_text(json.dumps(raw, indent=2) + "\n")
    print(f"written: {out_dir / f'store-{stamp}.md'} and .json", file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
