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

The target, the baseline and the clients are bench/webhook_peers.py, run as its ``_target``,
``_baseline`` and ``_client`` roles; processes, wrk, Redis and reports come from bench.lib.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import HOST, OUT_DIR, REPO, WRK_DIR
from bench.lib.admin import get_json, metric_samples
from bench.lib.configs import instance_url, redis_args, redis_url, router_yaml
from bench.lib.cpu import CpuSnapshot
from bench.lib.harness import Bench, run_main
from bench.lib.noisy import add_quiet_args, measure_quietly
from bench.lib.ports import free_port, free_ports
from bench.lib.procs import BenchError, Proc, http_post, module_argv, wait_http, wait_redis
from bench.lib.redis_probe import RedisProbe, entries_added, xlen
from bench.lib.report import fmt_ms, fmt_pct, fmt_us
from bench.lib.wrk import run_wrk, wrk_base
from bench.webhook_peers import BASELINE_STREAM, ROLES, TARGET_PATH, WEBHOOK_PATH, waha_body
from bench.webhook_results import Run, Server, render

LUA_SCRIPT = WRK_DIR / "webhook.lua"
PEERS = "bench.webhook_peers"  # the target, the baseline and the clients
ROUTER_PREFIX = "wa-router:"  # store.prefix default
LUA_SEED = 1
SERVERS = ("baseline", "baseline-uvloop", "router", "router-target-down")


def redis_argv(data: Path, port: int) -> list[str]:
    """redis-server as in production: appendonly, fsync every second."""
    return [*redis_args(data, port), "--appendfsync", "everysec"]


def router_conf(port: int, admin_port: int, redis_port: int, target_port: int, hook: str) -> str:
    """The router: Redis store, one webhook target (``hook``), log level WARNING."""
    # The instance is the target process (it answers 200 to the health check): the
    # config needs one, and no request in this benchmark is proxied to it.
    return router_yaml(
        port, admin_port, [("n1", instance_url(target_port))], log_level="WARNING",
        store_url=redis_url(redis_port), extra=f"webhooks:\n  targets:\n    - {{url: '{hook}'}}\n",
    )  # fmt: skip


def router_stream(url: str) -> str:
    from router.webhooks.filters import target_key  # the router's own naming

    return f"{ROUTER_PREFIX}wh:{target_key(url)}"


class WebhookBench:
    """The servers under test, the target, and what the runs found."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args
        self.tmp = bench.tmp
        self.procs = bench.procs
        self.failures = bench.failures
        self.servers: list[Server] = []
        self.target: Proc | None = None
        self.target_port = 0
        self.admin_port = 0
        self.paced: dict[str, Any] | None = None
        self.paced_discarded: list[dict[str, Any]] = []
        self.router_metrics: dict[str, float] = {}
        self.final_checks: dict[str, Any] = {}

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        a = self.args
        self.target_port = free_port()
        self.target = self.procs.start(
            "target",
            module_argv(PEERS, "_target", "--port", str(self.target_port)),
            self.tmp / "target.log",
            cwd=REPO,
        )
        wait_http(self.procs, self.target_port, "/ping", "target")
        for name, loop in (("baseline", "asyncio"), ("baseline-uvloop", "uvloop")):
            if name not in a.servers:
                continue
            port, redis_port = free_ports(2)
            redis = self.procs.start(
                f"redis-server ({name})",
                redis_argv(self.tmp / name / "redis", redis_port),
                self.tmp / f"redis-{name}.log",
            )
            wait_redis(self.procs, redis_port)
            argv = module_argv(PEERS, "_baseline", "--port", str(port))
            argv += ["--redis-port", str(redis_port), "--loop", loop]
            proc = self.procs.start(name, argv, self.tmp / f"{name}.log", cwd=REPO)
            wait_http(self.procs, port, "/healthz", name)
            label = f"naive baseline: aiohttp web.Application ({loop} loop), 1 XADD per request"
            stream = BASELINE_STREAM
            probe = RedisProbe(redis_port)
            self.servers.append(Server(name, label, port, proc, redis, probe, stream))
        # "router-target-down": the same router whose webhook target is a closed port, so
        # that (once its breaker opens) it only accepts: the accept path's own capacity.
        hook = f"http://{HOST}:{self.target_port}{TARGET_PATH}"
        for name, url in (("router", hook), ("router-target-down", None)):
            if name not in a.servers:
                continue
            if url is None:
                url = f"http://{HOST}:{free_port()}{TARGET_PATH}"  # nothing listens
            port, admin_port, redis_port = free_ports(3)
            if name == "router":
                self.admin_port = admin_port
            redis = self.procs.start(
                f"redis-server ({name})",
                redis_argv(self.tmp / name / "redis", redis_port),
                self.tmp / f"redis-{name}.log",
            )
            wait_redis(self.procs, redis_port)
            conf = router_conf(port, admin_port, redis_port, self.target_port, url)
            proc = self.bench.start_router(name, conf, port)
            label = "wa-router (Redis store, 1 target, per_session ordering)"
            if name != "router":
                label = "wa-router, same config but its webhook target is down (connection refused)"
            probe = RedisProbe(redis_port)
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
        stats = get_json(self.target_port, "/_stats")
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
            *wrk_base(a.connections, duration, a.threads),
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
        """A paced client (run it with ``cwd=REPO``)."""
        return module_argv(
            PEERS,
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
        )

    def cpu_now(self, s: Server) -> CpuSnapshot:
        """The server's, its redis-server's, the target's and the load's CPU counters
        (the load: wrk and client runs, the waited-for children)."""
        assert self.target is not None
        return CpuSnapshot.take(s.proc.pid, self.target.pid, s.redis_proc.pid)

    @staticmethod
    def cpu_used(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        """Cores used in between: server, redis, target, load, others."""
        used = after.usage_since(before)
        return {
            "server": used["target"],
            "redis": used["redis"],
            "target": used["backend"],
            "load": used["wrk"],
            "others": used["others"],
        }

    def run_once(self, s: Server, rnd: int, attempt: int, quiet: float) -> Run:
        """Warm up, then one measured wrk run against ``s`` (with the probe client for the
        router), then the counts: stored, delivered, drained."""
        a = self.args
        tag = f"{self.servers.index(s)}{rnd}{attempt}"
        added0 = entries_added(s.probe, s.stream)
        is_router = s.name == "router"
        stats0 = self.target_stats() if is_router else None
        warm = None
        if a.warmup > 0:
            warm, out = run_wrk(self.wrk_argv(s.url, a.warmup, tag + "w"), a.warmup)
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
                    cwd=REPO,
                )
            res, out = run_wrk(self.wrk_argv(s.url, a.duration, tag), a.duration)
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
                f"probe delivery p50 {fmt_ms(lat.get('p50'))} p99 {fmt_ms(lat.get('p99'))}"
            )
        print(
            f"  round {r.round} {s.name:18s} {r.wrk.rps:>7,.0f} ev/s  p50 "
            f"{fmt_us(r.wrk.latency_us['50'])}  p99 {fmt_us(r.wrk.latency_us['99'])}  "
            f"errors {r.wrk.errors}; 2xx {r.wrk_2xx + r.probe_ok:,}, stored {r.stored:,} "
            f"(+{r.slack}){extra}; CPU server {fmt_pct(r.cpu['server'])} redis "
            f"{fmt_pct(r.cpu['redis'])} target {fmt_pct(r.cpu['target'])} load "
            f"{fmt_pct(r.cpu['load'])} others {fmt_pct(r.cpu['others'])}",
            file=sys.stderr,
            flush=True,
        )

    def accept_rate(self) -> None:
        """Each server once per round; a run during which other processes used more than
        10% of a core is done again (up to ``--noisy-retries`` times) and the quietest
        attempt is kept."""
        for rnd in range(1, self.args.repeats + 1):
            for s in self.servers:
                self.measure_server(s, rnd)

    def measure_server(self, s: Server, rnd: int) -> None:
        """Round ``rnd`` of ``s``: a run on a quiet machine, again when it was noisy."""

        def once(quiet: float, attempt: int) -> Run:
            return self.run_once(s, rnd, attempt, quiet)

        kept, discarded = measure_quietly(
            self.procs, self.args, once, lambda r: r.cpu["others"], f"{s.name}: round {rnd}"
        )
        s.runs.append(kept)
        s.discarded += discarded

    def paced_run(self) -> None:
        """The paced load, done again like the accept runs when noisy (quietest kept)."""
        router = next((s for s in self.servers if s.name == "router"), None)
        if router is None or self.args.paced_rate <= 0:
            return
        self.paced, self.paced_discarded = measure_quietly(
            self.procs, self.args,
            lambda quiet, attempt: self.paced_once(router, f"paced{attempt}", quiet),
            lambda r: r["cpu"]["others"], "paced",
        )  # fmt: skip

    def paced_once(self, router: Server, prefix: str, quiet: float) -> dict[str, Any]:
        """The paced client against the router, until every event is delivered."""
        a = self.args
        added0 = entries_added(router.probe, router.stream)
        argv = self.client_argv(
            router.url, a.paced_rate, a.paced_duration, a.paced_sessions, a.paced_concurrency,
            prefix,
        )  # fmt: skip
        before = self.cpu_now(router)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=a.paced_duration + 90, check=False,
            cwd=REPO,
        )  # fmt: skip
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
            f"{group['unique']:,} (dups {group['duplicates']}); delivery p50 {fmt_ms(lat['p50'])} "
            f"p99 {fmt_ms(lat['p99'])} max {fmt_ms(lat['max'])}; HTTP p50 "
            f"{fmt_ms(client['http_ms']['p50'])} p99 {fmt_ms(client['http_ms']['p99'])}; CPU router "
            f"{fmt_pct(used['server'])} target {fmt_pct(used['target'])} client "
            f"{fmt_pct(used['load'])} others {fmt_pct(used['others'])}",
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
        self.router_metrics = metric_samples(self.admin_port, "router_webhook")
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
    add_quiet_args(p)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or not names:
        p.error(f"--servers: a subset of {','.join(SERVERS)}")
    args.servers = [n for n in SERVERS if n in names]
    return args


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    """Start everything, measure, render; the report and the raw numbers."""
    b = WebhookBench(bench)
    bench.logs += [bench.tmp / f"{n}.log" for n in (*SERVERS, "target")]
    bench.logs += [bench.tmp / f"redis-{n}.log" for n in SERVERS]
    try:
        print("starting target, redis-servers, servers", file=sys.stderr)
        b.start()
        b.accept_rate()
        b.paced_run()
        b.final()
    finally:
        for s in b.servers:
            s.probe.close()
    report = render(b, bench.info, bench.started)
    raw = {
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
    }
    return report, raw


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:  # the former spelling: webhook_bench.py _client ...
        return ROLES[argv[0]](argv[1:])
    return run_main("webhook", parse_args(argv), run, tools=("wrk", "redis-server"))


if __name__ == "__main__":
    sys.exit(main())
