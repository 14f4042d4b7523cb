"""End-to-end proxy benchmark: wa-router against nginx (and HAProxy) on the same backends.

    /work/venv/bin/python bench/proxy_bench.py [--duration 10] [--connections 32]
        [--sessions 1000] [--repeats 2] [--scrapes 1]
        [--targets direct,nginx,haproxy,router-nokeys,router,router-pure,router-nometrics,router-accesslog,
                   router-redis,router-workers2]
                   router-workers2]

One run does everything, on 127.0.0.1 only:

1. starts one nginx (1 worker) serving three tiny-JSON backends b1..b3 on free ports;
2. starts each proxy under test on its own free port, in front of those same backends:
   nginx (``hash $http_x_session_id consistent`` + upstream keepalive), HAProxy
   (``balance hdr(X-Session-Id)`` + ``hash-type consistent``, 1 thread) when installed,
   and wa-router (``python -m router run -c cfg.yaml``, profile ``generic``) four times:
   with the in-memory store (``router``), the same with ``metrics: {enabled: false}``
   (``router-nometrics``: no per-request accounting, /metrics answers 404), the same with
   ``listen.idempotency_keys: false`` (``router-nokeys``), the same with its access log on
   (``router-accesslog``: JSON lines to a file in the temp dir) and with the
   Redis store (``router-redis``) against a redis-server the script starts itself (free
   port, temp dir, appendonly, no other client); and ``router-workers2``: the Redis config
   plus ``listen.workers: 2`` (two worker processes sharing the port with SO_REUSEPORT),
   against a redis-server of its own;
3. checks every target answers 200 and is sticky (one session, one backend), then runs wrk
   (``bench/wrk/sessions.lua``: X-Session-Id drawn from N ids) against each target in turn,
   each measured run preceded by a short warmup, and repeats the whole sequence R times
   (interleaved, so that noise hits every target alike), reporting medians;
   For ``router-redis`` it also reads ``INFO commandstats`` before and after each warmup
   and measured run: the Redis commands the router sent while serving cached sessions
   (issue 3: none), besides this script's own INFO calls.
   For the routers with metrics on it scrapes the admin /metrics before, during (under
   load, ``--scrapes`` times) and after each measured run: scraping works under load, its
   latency, and the responses counted must cover every response wrk received;
   ``router-nokeys``, ``router``, ``router-nometrics`` and ``router-accesslog`` run in
   reverse order every other round, and the report gives router / router-nometrics per
   round, its median and a bootstrap interval of that median: what metrics cost (issue 6:
   at most 5%); and the same for router / router-nokeys: what idempotency keys cost
   requests without the header (issue 17: at most 2%; the load carries no
   Idempotency-Key), and for router-accesslog / router: what the access log costs (issue
   17: at most 5%), its file emptied before each warmup and its lines counted after each
   run (at least one per response);
4. prints a markdown table and writes it, with the raw numbers as JSON, to bench/out/;
5. stops every process it started (also on Ctrl-C / SIGTERM) and checks none is left.

It exits 1, loudly, if any target answered a non-2xx status or had socket errors (in a
warmup or a measured run), was not sticky, or died; the router's log tail is printed then.
The "direct" row (wrk straight to backend b1) calibrates the machine against the anchors.
"""


from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import HOST, OUT_DIR
from bench.lib.admin import LoadScraper, backend_counters, scrape_metrics
from bench.lib.configs import (
    BACKENDS,
    backend_nginx_conf,
    haproxy_conf,
    instance_url,
    proxy_nginx_conf,
    redis_args,
    redis_url,
    router_yaml,
)
from bench.lib.cpu import CpuSnapshot, cpu_seconds, cpu_seconds_own, tree_memory_kib, tree_pids
from bench.lib.harness import Bench, run_main
from bench.lib.noisy import add_quiet_args, measure_quietly
from bench.lib.ports import free_ports
from bench.lib.procs import Proc, http_get, wait_http, wait_redis
from bench.lib.redis_probe import (
    REDIS_PREFIX,
    RedisMonitor,
    RedisProbe,
    classify_monitor,
    client_list,
    fmt_commands,
)
from bench.lib.report import fmt_pct, fmt_us
from bench.lib.wrk import REQUEST_PATH, WrkResult, run_wrk
from bench.proxy_results import (
    ACCESS_PAIR,
    ALL_TARGETS,
    PAIRED,
    PURE,
    ROUTERS,
    WORKERS2,
    Target,
    access_cost,
    keys_cost,
    metrics_cost,
    render,
    wrk_argv,
)


def sticky_check(target: Target, sessions: int) -> list[str]:
    """A few sessions, three requests each: 200, a backend body, always the same backend.
    Records the placement, and compares it with a previous one (placements must not move)."""
    problems: list[str] = []
    sample = sorted({1, 2, 3, sessions // 2 or 1, sessions})
    for i in sample:
        session = f"sess-{i}"
        nodes: set[str] = set()
        for _ in range(3):
            try:
                status, headers, body = http_get(
                    target.port, REQUEST_PATH, {"X-Session-Id": session}
                )
            except OSError as e:
                problems.append(f"{target.name}: {session}: {e}")
                break
            if status != 200:
                problems.append(f"{target.name}: {session}: HTTP {status} {body[:200]!r}")
                break
            try:
                node = str(json.loads(body)["node"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{target.name}: {session}: unexpected body {body[:200]!r}")
                break
            nodes.add(node)
            if target.name in ROUTERS:
                via = headers.get("x-router-instance")
                if via != node:
                    problems.append(
                        f"{target.name}: {session}: X-Router-Instance {via!r} "
                        f"but body from {node!r}"
                    )
                if "x-request-id" not in headers:
                    problems.append(f"{target.name}: {session}: no X-Request-Id in the response")
        if len(nodes) > 1:
            problems.append(f"{target.name}: {session} is not sticky: {sorted(nodes)}")
        elif nodes:
            node = nodes.pop()
            before = target.placement.setdefault(session, node)
            if before != node:
                problems.append(f"{target.name}: {session} moved from {before} to {node}")
    return problems


# --------------------------------------------------------------------------- reporting


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run (10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warmup before each run (2)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    p.add_argument("--sessions", type=int, default=1000, help="distinct X-Session-Id values (1000)")
    p.add_argument(
        "--repeats", type=int, default=2, help="interleaved rounds; medians reported (2)"
    )
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated subset of: direct (wrk to backend b1), nginx, haproxy, "
        "router-nokeys (router with listen.idempotency_keys: false), "
        "router (memory store), router-pure (the same, WA_ROUTER_PURE=1: the data path as Python), router-nometrics (the same, metrics: {enabled: false}), "
        "router-redis (Redis store; starts its own redis-server), router-workers2 "
        "(listen.workers: 2, Redis store, its own redis-server); default: all",
    )
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="bench/out")
    add_quiet_args(p)
    p.add_argument(
        "--scrapes",
        type=int,
        default=1,
        help="GET /metrics this many times during each measured run of a router with "
        "metrics on (besides once before and once after it); 0: none under load (1)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_TARGETS))
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)}")
    args.target_names = [n for n in ALL_TARGETS if n in names]  # fixed order
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1 or args.sessions < 1:
        p.error("--duration and --repeats must be positive, --sessions >= 1, --warmup >= 0")
    if args.scrapes < 0:
        p.error("--scrapes must be >= 0")
    return args


def start_everything(bench: Bench) -> tuple[list[Target], Proc, int]:
    """Start the backends and every proxy; the targets, the backend nginx and its status
    port."""
    args, tmp, procs = bench.args, bench.tmp, bench.procs
    want = set(args.target_names)
    if "haproxy" in want and shutil.which("haproxy") is None:
        print("haproxy not installed: skipping that row", file=sys.stderr)
        want.discard("haproxy")
    for name in ("router-redis", WORKERS2):
        if name in want and shutil.which("redis-server") is None:
            print(f"redis-server not installed: skipping the {name} row", file=sys.stderr)
            want.discard(name)
    *backend_ports, status_port = free_ports(len(BACKENDS) + 1)
    nginx_port, haproxy_port, router_port, admin_port = free_ports(4)
    redis_router_port, redis_admin_port, redis_port = free_ports(3)
    nometrics_port, nometrics_admin_port = free_ports(2)
    access_port, access_admin_port = free_ports(2)
    nokeys_port, nokeys_admin_port = free_ports(2)
    workers_port, workers_admin_port, workers_redis_port = free_ports(3)
    instances = [(name, instance_url(p)) for name, p in zip(BACKENDS, backend_ports, strict=True)]

    def router(name: str, port: int, admin: int, redis: int | None = None, metrics: bool = True,
               workers: int = 1, keys: bool = True, access_log: Path | None = None,
               pure: bool = False) -> Proc:  # fmt: skip
        conf = router_yaml(
            port, admin, instances, workers=workers, profile="generic", log_level="WARNING",
            store_url=redis_url(redis) if redis is not None else None,
            store_prefix=REDIS_PREFIX if redis is not None else None, metrics=metrics,
            idempotency_keys=keys,
            access_log=str(access_log) if access_log is not None else None,
        )  # fmt: skip
        proc = bench.start_router(name, conf, port, workers=workers, pure=pure)
        bench.copy_logs.append(proc.log)
        return proc

    def redis_server(name: str, data: Path, port: int) -> tuple[Proc, RedisProbe]:
        # Its own redis-server: fresh (no assignment yet: the first warmup places every
        # session), appendonly as in production, and no client but the router and the probe.
        log = tmp / f"{name}.log"
        bench.logs.append(log)
        proc = procs.start(f"redis-server ({name})", redis_args(data, port), log)
        wait_redis(procs, port)
        return proc, RedisProbe(port)

    backend = bench.start_nginx(
        "backend", backend_nginx_conf(tmp, backend_ports, status_port), backend_ports[0], "/ping"
    )
    for port in backend_ports[1:]:
        wait_http(procs, port, "/ping", "backend nginx")

    targets: list[Target] = []
    if "direct" in want:
        targets.append(Target("direct", "backend direct (nginx b1)", backend_ports[0], backend))
    if "nginx" in want:
        conf = proxy_nginx_conf(tmp, nginx_port, backend_ports)
        proc = bench.start_nginx("nginx-proxy", conf, nginx_port, "/ping")
        targets.append(
            Target("nginx", "nginx 1 worker, hash consistent, keepalive", nginx_port, proc)
        )
    if "haproxy" in want:
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(haproxy_conf(haproxy_port, backend_ports))
        proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], tmp / "haproxy.out")
        wait_http(procs, haproxy_port, "/ping", "haproxy")
        targets.append(
            Target("haproxy", "HAProxy 1 thread, hash-type consistent", haproxy_port, proc)
        )
    if "router-nokeys" in want:
        proc = router("router-nokeys", nokeys_port, nokeys_admin_port, keys=False)
        targets.append(
            Target("router-nokeys",
                   "wa-router (generic profile, memory store), `listen.idempotency_keys: false`",
                   nokeys_port, proc, admin_port=nokeys_admin_port, metrics=True)
        )  # fmt: skip
    if "router" in want:
        proc = router("router", router_port, admin_port)
        targets.append(
            Target("router", "wa-router (generic profile, memory store)", router_port, proc,
                   admin_port=admin_port, metrics=True)
        )  # fmt: skip
    if PURE in want:
        pure_port, pure_admin_port = free_ports(2)
        proc = router(PURE, pure_port, pure_admin_port, pure=True)
        targets.append(
            Target(PURE, "wa-router (generic profile, memory store), pure Python "
                   "(`WA_ROUTER_PURE=1`)", pure_port, proc, admin_port=pure_admin_port,
                   metrics=True)
        )  # fmt: skip
    if "router-nometrics" in want:
        proc = router("router-nometrics", nometrics_port, nometrics_admin_port, metrics=False)
        targets.append(
            Target("router-nometrics", "wa-router (generic profile, memory store), metrics off",
                   nometrics_port, proc, admin_port=nometrics_admin_port)
        )  # fmt: skip
    if ACCESS_PAIR[0] in want:
        log = tmp / "access.log"
        proc = router(ACCESS_PAIR[0], access_port, access_admin_port, access_log=log)
        targets.append(
            Target(ACCESS_PAIR[0], "wa-router (generic profile, memory store), access log on",
                   access_port, proc, admin_port=access_admin_port, metrics=True,
                   access_log=log)
        )  # fmt: skip
    if "router-redis" in want:
        redis, probe = redis_server("redis", tmp / "redis", redis_port)
        proc = router("router-redis", redis_router_port, redis_admin_port, redis=redis_port)
        targets.append(
            Target("router-redis", "wa-router (generic profile, Redis store)", redis_router_port,
                   proc, redis=probe, redis_proc=redis, redis_port=redis_port,
                   admin_port=redis_admin_port, metrics=True)
        )  # fmt: skip
    if WORKERS2 in want:
        # listen.workers: 2 needs store.url: the Redis store, against a redis-server of its
        # own (same settings as router-redis'). The workers share the port (SO_REUSEPORT):
        # the kernel spreads wrk's connections over them by a hash of the address pair.
        # Only worker 0 serves the admin port; it adds the other workers' counters, which
        # they publish through Redis once a second, so its /metrics lags by up to a second
        # and is not scraped for this row (the check that it counted every response would
        # fail on the lag, not on the router).
        redis, probe = redis_server("redis-workers2", tmp / "workers2" / "redis", workers_redis_port)
        proc = router(WORKERS2, workers_port, workers_admin_port, redis=workers_redis_port,
                      workers=2)  # fmt: skip
        targets.append(
            Target(WORKERS2, "wa-router, `workers: 2` (generic profile, Redis store)",
                   workers_port, proc, redis=probe, redis_proc=redis, redis_port=workers_redis_port,
                   admin_port=workers_admin_port, workers=2)
        )  # fmt: skip
    return targets, backend, status_port


def run_once(
    bench: Bench, t: Target, backend: Proc, status_port: int, rnd: int, quiet: float
) -> tuple[WrkResult, str]:
    """Warm up, then one measured wrk run against ``t`` (the machine is quiet: ``quiet``
    is what other processes used just before)."""
    args, procs, failures = bench.args, bench.procs, bench.failures
    probe = t.redis
    warm_start = probe.snapshot() if probe is not None else None
    if t.access_log is not None:
        t.access_log.write_bytes(b"")  # the router appends (O_APPEND): lines start at 0
    warmed = 0
    if args.warmup > 0:
        warm, out = run_wrk(wrk_argv(args, t.url, args.warmup), args.warmup)
        warmed = warm.requests
        t.warmups.append(warm)
        if warm.errors:
            failures.append(f"{t.name}: warmup {rnd}: {warm.errors_text()}\n{out}")
    procs.check_alive()
    proxy_pid = None if t.proc is None or t.proc is backend else t.proc.pid
    redis_pid = t.redis_proc.pid if t.redis_proc is not None else None
    assignments = None
    if probe is not None:
        assignments = probe.command("HLEN", REDIS_PREFIX + "assignments")
    accepts0, served0 = backend_counters(status_port)
    scrape_port = t.admin_port if t.metrics else None
    pre_t0 = time.monotonic()
    pre = scrape_metrics(scrape_port, pre_t0) if scrape_port is not None else None
    monitor = None
    if probe is not None and t.redis_port:
        monitor = RedisMonitor(t.redis_port)
        probe.sent.update(["client|setname", "monitor"])  # the monitor's: ours too
    redis0 = probe.snapshot() if probe is not None else None
    before = CpuSnapshot.take(proxy_pid, backend.pid, redis_pid)
    worker_pids = tree_pids(proxy_pid)[1:] if proxy_pid is not None and t.workers > 1 else []
    worker_cpu0 = [cpu_seconds_own(p) for p in [proxy_pid, *worker_pids] if p is not None]
    scraper = (
        LoadScraper(scrape_port, args.duration, args.scrapes)
        if scrape_port is not None and args.scrapes > 0
        else None
    )
    try:
        res, out = run_wrk(wrk_argv(args, t.url, args.duration), args.duration)
    finally:
        under_load, scrape_errors = scraper.join() if scraper is not None else ([], [])
    after = CpuSnapshot.take(proxy_pid, backend.pid, redis_pid)
    used = after.usage_since(before)
    if worker_pids and proxy_pid is not None:
        wall = after.wall - before.wall
        worker_cpu1 = [cpu_seconds_own(p) for p in [proxy_pid, *worker_pids]]
        shares = [(b - a) / wall for a, b in zip(worker_cpu0, worker_cpu1, strict=True)]
        res.master_cpu, res.worker_cpu = shares[0], shares[1:]
    if scrape_port is not None and pre is not None:
        t0 = scraper.t0 if scraper is not None else before.wall
        post = scrape_metrics(scrape_port, t0)
        pre.at += pre_t0 - t0  # relative to the run's start, like the others
        res.scrapes = [pre, *under_load, post]
        if pre.responses is not None and post.responses is not None:
            res.metrics_counted = post.responses - pre.responses
        failures += [f"{t.name}: round {rnd}: {e}" for e in scrape_errors]
        bad = [s for s in res.scrapes if s.status != 200 or s.responses is None]
        if bad:
            failures.append(
                f"{t.name}: round {rnd}: GET /metrics answered {bad[0].status} "
                f"({bad[0].size} bytes, router_requests_total: {bad[0].responses})"
            )
        elif res.metrics_counted is not None and res.metrics_counted < res.requests:
            failures.append(
                f"{t.name}: round {rnd}: router_requests_total grew by {res.metrics_counted:,} "
                f"during the measured run, but wrk received {res.requests:,} responses"
            )
    redis1 = probe.snapshot() if probe is not None else None
    if probe is not None and monitor is not None:
        clients = client_list(probe)
        mine = {c.get("addr", "") for c in clients if c.get("name", "").startswith("bench-")}
        subscribers = {c.get("addr", "") for c in clients if "P" in c.get("flags", "")}
        res.redis_monitor, res.redis_monitor_samples = classify_monitor(
            monitor.stop(probe), mine, subscribers
        )
    accepts1, served1 = backend_counters(status_port)
    res.backend_accepts, res.backend_requests = accepts1 - accepts0, served1 - served0
    if t.access_log is not None:
        res.access_lines = access_lines(t.access_log, warmed + res.requests)
        if res.access_lines < warmed + res.requests:
            failures.append(
                f"{t.name}: round {rnd}: {res.access_lines:,} access log lines for "
                f"{warmed + res.requests:,} responses (warmup and run)"
            )
    res.proxy_cpu = used["target"] if proxy_pid is not None else None
    res.backend_cpu, res.wrk_cpu = used["backend"], used["wrk"]
    res.others_cpu, res.others_before = used["others"], quiet
    if redis0 is not None and redis1 is not None and warm_start is not None:
        res.redis_commands = redis1.since(redis0)
        res.redis_commands_total = redis1.total_since(redis0)
        res.redis_warmup_commands = redis0.since(warm_start)
        if t.redis_first_warmup is None:
            t.redis_first_warmup = res.redis_warmup_commands
        res.redis_assignments = assignments if isinstance(assignments, int) else None
        res.redis_clients = redis1.clients
        res.redis_cpu = used["redis"]
        n = sum(res.redis_commands.values())
        causes = "; ".join(
            f"{k}: {fmt_commands(v)}" for k, v in (res.redis_monitor or {}).items()
        )
        print(
            f"  round {rnd}/{args.repeats} {t.name}: Redis commands during the warmup: "
            f"{fmt_commands(res.redis_warmup_commands)}; during the measured run: "
            f"{fmt_commands(res.redis_commands)} ({n / max(res.requests, 1):.4f} per request; "
            f"total_commands_processed says {res.redis_commands_total}; MONITOR: {causes}); "
            f"{assignments} assignments in Redis, {res.redis_clients} clients, "
            f"redis-server CPU {fmt_pct(res.redis_cpu)}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"  round {rnd}/{args.repeats} {t.name:12s} {res.rps:>10,.0f} req/s  "
        f"p50 {fmt_us(res.latency_us['50']):>9s}  p99 {fmt_us(res.latency_us['99']):>9s}"
        f"  errors {res.errors}  (CPU: proxy {fmt_pct(res.proxy_cpu)}, backend "
        f"{fmt_pct(res.backend_cpu)}, wrk {fmt_pct(res.wrk_cpu)}, "
        f"others {fmt_pct(res.others_cpu)}; backends accepted "
        f"{res.backend_accepts} connections)",
        file=sys.stderr,
        flush=True,
    )
    if res.worker_cpu is not None:
        print(
            f"  round {rnd}/{args.repeats} {t.name}: CPU per worker "
            f"{', '.join(fmt_pct(c) for c in res.worker_cpu)} (master {fmt_pct(res.master_cpu)})"
            f" with {args.connections} connections",
            file=sys.stderr,
            flush=True,
        )
    if res.scrapes is not None:
        during = [s for s in res.scrapes if 0 <= s.at <= args.duration]
        print(
            f"  round {rnd}/{args.repeats} {t.name}: /metrics scraped {len(during)} time(s) "
            f"under load ({', '.join(f'{s.seconds * 1e3:.1f} ms' for s in during) or '-'}; "
            f"{res.scrapes[-1].size:,} bytes); router_requests_total grew by "
            f"{'?' if res.metrics_counted is None else f'{res.metrics_counted:,}'} "
            f"(wrk received {res.requests:,}, the backends served {res.backend_requests:,})",
            file=sys.stderr,
            flush=True,
        )
    procs.check_alive()
    return res, out


def measure_target(
    bench: Bench, t: Target, backend: Proc, status_port: int, rnd: int
) -> None:
    """Round ``rnd`` of ``t``: a run on a quiet machine, again when it was noisy."""

    def once(quiet: float, attempt: int) -> WrkResult:
        res, out = run_once(bench, t, backend, status_port, rnd, quiet)
        if res.errors:
            bench.failures.append(f"{t.name}: round {rnd}: {res.errors_text()}\n{out}")
        return res

    kept, discarded = measure_quietly(
        bench.procs, bench.args, once, lambda r: r.others_cpu, f"{t.name}: round {rnd}"
    )
    t.runs.append(kept)
    t.discarded += discarded


def measure(bench: Bench, targets: list[Target], backend: Proc, status_port: int) -> None:
    """The checks, the interleaved rounds, the checks again; failures go to the bench."""
    args, failures = bench.args, bench.failures
    for t in targets:
        failures += sticky_check(t, args.sessions)
    for t in targets:
        failures += metrics_check(t)
    for rnd in range(1, args.repeats + 1):
        for t in round_order(targets, rnd):
            measure_target(bench, t, backend, status_port, rnd)
    for t in targets:
        failures += sticky_check(t, args.sessions)  # same placements after the load?
        if t.redis is not None:  # who was connected to the router's Redis
            listing = t.redis.command("CLIENT", "LIST")
            names = re.findall(r"(?:^| )name=(\S*)", listing if isinstance(listing, str) else "")
            t.redis_client_names = [n or "(no name)" for n in names]
            # the router's own (store, outbox, keys: "wa-router*") and this benchmark's
            strangers = [n for n in names if not n.startswith("wa-router")
                         and n not in ("bench-probe", "bench-monitor")]
            if strangers:
                failures.append(f"{t.name}: unexpected Redis clients: {strangers}")


def round_order(targets: list[Target], rnd: int) -> list[Target]:
    """The targets in round ``rnd``'s order: the paired routers (``router-nokeys``,
    ``router``, ``router-nometrics``, ``router-accesslog``, those that run) take their
    places in reverse order every other round (ABBA), so that none always runs first: each
    pair's difference is a few percent, of the order of the drift between two runs. With
    ``router`` between ``router-nokeys`` and ``router-nometrics``, it runs right next to
    each of them in every round."""
    order = list(targets)
    if rnd % 2 == 0:
        slots = [i for i, t in enumerate(order) if t.name in PAIRED]
        for i, t in zip(slots, [order[i] for i in reversed(slots)], strict=True):
            order[i] = t
    return order


def access_lines(path: Path, want: int, timeout: float = 5.0) -> int:
    """Lines in ``path`` once there are ``want`` (the router writes its buffer at least
    once a second), or as many as there are after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with path.open("rb") as f:
            lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        if lines >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


IDLE_SCRAPES = 100  # CPU time is counted in ticks (10 ms): enough to resolve 0.1 ms


def metrics_check(t: Target) -> list[str]:
    """A router with metrics on must serve /metrics with router_requests_total (the sticky
    check's requests are in it); with metrics off, /metrics must answer 404 (the switch
    took effect). For the former, also the cost of a scrape on the idle router: its CPU
    time over ``IDLE_SCRAPES`` scrapes in a row."""
    if t.name not in ROUTERS or t.admin_port is None or t.proc is None or t.workers > 1:
        return []  # workers: only worker 0 serves the admin port, its own counts only
    try:
        if not t.metrics:
            status, _, _ = http_get(t.admin_port, "/metrics")
            if status != 404:
                return [f"{t.name}: metrics are off, but GET /metrics answered {status}"]
            return []
        cpu0, t0 = cpu_seconds(t.proc.pid), time.monotonic()
        scrapes = [scrape_metrics(t.admin_port, t0) for _ in range(IDLE_SCRAPES)]
        cpu = cpu_seconds(t.proc.pid) - cpu0
    except (OSError, http.client.HTTPException) as e:
        return [f"{t.name}: GET /metrics: {e}"]
    bad = [s for s in scrapes if s.status != 200 or not s.responses]
    if bad:
        return [
            f"{t.name}: GET /metrics answered {bad[0].status} with router_requests_total "
            f"{bad[0].responses} after the sticky check's requests"
        ]
    t.idle_scrapes = {
        "scrapes": IDLE_SCRAPES,
        "cpu_ms_per_scrape": cpu / IDLE_SCRAPES * 1e3,
        "median_ms": statistics.median(s.seconds for s in scrapes) * 1e3,
        "bytes": statistics.median(s.size for s in scrapes),
    }
    return []


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    """Start everything, measure, render; the report and the raw numbers."""
    args = bench.args
    bench.tail_lines = 60
    targets: list[Target] = []
    rss: dict[str, dict[str, int]] = {}
    try:
        print("starting backends and proxies", file=sys.stderr, flush=True)
        targets, backend, status_port = start_everything(bench)
        routers = [t for t in targets if t.name in ROUTERS and t.proc is not None]
        for t in routers:
            assert t.proc is not None
            rss[t.name] = {f"start_{k}": v for k, v in tree_memory_kib(t.proc.pid).items()}
        measure(bench, targets, backend, status_port)
        for t in routers:
            assert t.proc is not None
            rss[t.name].update({f"end_{k}": v for k, v in tree_memory_kib(t.proc.pid).items()})
    finally:
        for t in targets:
            if t.redis is not None:
                t.redis.close()
    report = render(args, targets, bench.info, bench.started, rss)
    raw = {
        "wrk": wrk_argv(args, f"http://{HOST}:PORT{REQUEST_PATH}", args.duration),
        "router_memory_kib": rss,
        "targets": {
            t.name: {
                "label": t.label,
                "median_rps": t.median("rps") if t.runs else None,
                "errors": t.errors(),
                "runs": [asdict(r) for r in t.runs],
                "warmups": [asdict(r) for r in t.warmups],
                "discarded_noisy_runs": [asdict(r) for r in t.discarded],
                "placement_sample": t.placement,
                "redis_client_names": t.redis_client_names,
                "redis_first_warmup_commands": t.redis_first_warmup,
                "idle_scrapes": t.idle_scrapes,
            }
            for t in targets
        },
        "metrics_cost": metrics_cost(targets),
        "keys_cost": keys_cost(targets),
        "access_cost": access_cost(targets),
    }
    return report, raw


def main(argv: list[str] | None = None) -> int:
    return run_main("proxy", parse_args(argv), run, tmp_prefix="wa-router-bench-")


if __name__ == "__main__":
    sys.exit(main())
