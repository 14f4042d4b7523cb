"""Latency added at a fixed request rate: wa-router against nginx, p50/p99 (issue 8).

    /work/venv/bin/python bench/latency_bench.py [--rate 2000] [--connections 32]
        [--duration 15] [--warmup 3] [--repeats 3] [--sessions 1000]
        [--targets nginx,router] [--wait-quiet 15] [--out-dir bench/out] [--keep-tmp]

Saturation benchmarks (proxy_bench.py) measure latency with every connection busy: mostly
queueing. Here every target gets the same fixed rate, far below what it can do, so the
percentiles show the latency a proxy adds to a request, and its tail (GC pauses, timers):

1. starts the same backends as proxy_bench (one nginx, 1 worker, three servers b1..b3) and,
   in front of them, nginx (``hash $http_x_session_id consistent``, upstream keepalive) and
   wa-router (``profile: generic``, memory store, metrics on), as in proxy_bench;
2. paces wrk with its ``delay()`` hook (``bench/wrk/paced.lua``): after each response a
   connection waits ~C / RATE s before its next request (drawn from 0.5..1.5x that, so the
   connections do not move in lockstep), which gives ~RATE req/s over C connections. The
   warmup before each measured run (same rate) measures the achieved rate, and the delay is
   corrected from it (each cycle is delay + latency), per target;
3. runs ``--repeats`` interleaved rounds (the order alternates: nginx, router / router,
   nginx), and reports per target the achieved rate, p50/p75/p90/p99 (wrk ``--latency``;
   medians over rounds), CPU, and the p99 difference router - nginx per round and its
   median: issue 8's target is <= 1 ms.

wrk measures each request from when it is written: with pacing, a stalled response delays
that connection's next request instead of queueing it (no coordinated-omission correction
as in wrk2): at 2,000 req/s over 32 connections a stall is still seen by every connection
that has a request in flight. Exits 1 on any error response or socket error.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import HOST, WRK_DIR
from bench.lib.configs import (
    BACKENDS,
    backend_nginx_conf,
    instance_url,
    proxy_nginx_conf,
    router_yaml,
)
from bench.lib.harness import Bench, Measured, common_args, measure, run_main
from bench.lib.noisy import noisy_note
from bench.lib.ports import free_ports
from bench.lib.procs import Proc
from bench.lib.report import fmt_pct, fmt_us, header_lines
from bench.lib.wrk import LUA_SEED, REQUEST_PATH, wrk_base

LUA = WRK_DIR / "paced.lua"
TARGETS = ("direct", "nginx", "router")
P99_TARGET_US = 1000.0  # issue 8: router p99 within 1 ms of nginx's at the fixed rate


@dataclass
class Target:
    name: str
    label: str
    port: int
    proc: Proc
    delay_ms: float  # current pacing delay (corrected after each warmup)
    runs: list[Measured] = field(default_factory=list)
    warmups: list[Measured] = field(default_factory=list)

    def median(self, key: str) -> float:
        if key == "rps":
            return statistics.median(m.rps for m in self.runs)
        return statistics.median(m.p(key) for m in self.runs)


def wrk_argv(args: argparse.Namespace, port: int, duration: float, delay_ms: float) -> list[str]:
    return [
        *wrk_base(args.connections, duration),
        "-s",
        str(LUA),
        f"http://{HOST}:{port}{REQUEST_PATH}",
        "--",
        str(args.sessions),
        str(LUA_SEED),
        f"{delay_ms:.3f}",
    ]


def corrected_delay(args: argparse.Namespace, delay_ms: float, achieved: float) -> float:
    """The delay that gives ``args.rate``, from one that gave ``achieved`` req/s: a cycle
    is delay + latency (+ timer slack), C connections -> rate = C / cycle."""
    if achieved <= 0:
        return delay_ms
    cycle_ms = args.connections / achieved * 1e3
    slack = cycle_ms - delay_ms
    wanted = args.connections / args.rate * 1e3 - slack
    return float(max(wanted, 0.5 * delay_ms, 1.0))


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    args = bench.args
    tmp = bench.tmp
    *backend_ports, status_port = free_ports(len(BACKENDS) + 1)
    nginx_port, router_port, admin_port = free_ports(3)
    backend = bench.start_nginx(
        "backend", backend_nginx_conf(tmp, backend_ports, status_port), backend_ports[0], "/ping"
    )
    base_delay = args.connections / args.rate * 1e3
    targets: list[Target] = []
    if "direct" in args.target_names:
        targets.append(
            Target("direct", "backend direct (nginx b1)", backend_ports[0], backend, base_delay)
        )
    if "nginx" in args.target_names:
        proc = bench.start_nginx(
            "nginx-proxy", proxy_nginx_conf(tmp, nginx_port, backend_ports), nginx_port, "/ping"
        )
        targets.append(
            Target("nginx", "nginx 1 worker, hash consistent, keepalive", nginx_port, proc, base_delay)
        )
    if "router" in args.target_names:
        conf = router_yaml(
            router_port, admin_port, [(n, instance_url(p)) for n, p in zip(BACKENDS, backend_ports, strict=True)]
        )
        proc = bench.start_router("router", conf, router_port)
        targets.append(
            Target("router", "wa-router (generic profile, memory store)", router_port, proc, base_delay)
        )
    for rnd in range(1, args.repeats + 1):
        order = targets if rnd % 2 else list(reversed(targets))
        for t in order:
            warm, _ = measure(
                bench, wrk_argv(args, t.port, args.warmup, t.delay_ms), args.warmup, t.proc,
                backend, f"{t.name}: warmup {rnd}", retries=False,
            )  # fmt: skip
            t.warmups.append(warm)
            t.delay_ms = corrected_delay(args, t.delay_ms, warm.rps)
            m, _ = measure(
                bench, wrk_argv(args, t.port, args.duration, t.delay_ms), args.duration, t.proc,
                backend, f"{t.name}: round {rnd}",
            )  # fmt: skip
            m.extra["delay_ms"] = t.delay_ms
            t.runs.append(m)
            t.delay_ms = corrected_delay(args, t.delay_ms, m.rps)
            print(
                f"  round {rnd}/{args.repeats} {t.name:7s} {m.rps:8,.0f} req/s (target "
                f"{args.rate:,.0f}, delay {m.extra['delay_ms']:.2f} ms)  p50 "
                f"{fmt_us(m.p('50'))}  p99 {fmt_us(m.p('99'))}  errors {m.wrk.errors}  "
                f"(CPU: proxy {fmt_pct(m.proxy_cpu)}, others {fmt_pct(m.others_cpu)})",
                file=sys.stderr,
                flush=True,
            )
    return render(bench, targets)


def p99_diffs(targets: list[Target]) -> list[float]:
    nginx = next((t for t in targets if t.name == "nginx" and t.runs), None)
    router = next((t for t in targets if t.name == "router" and t.runs), None)
    if nginx is None or router is None:
        return []
    return [r.p("99") - n.p("99") for r, n in zip(router.runs, nginx.runs, strict=False)]


def render(bench: Bench, targets: list[Target]) -> tuple[str, dict[str, Any]]:
    args = bench.args
    lines = header_lines("Latency at a fixed rate", bench.started, bench.info)
    wrk_cmd = " ".join(wrk_argv(args, 0, args.duration, args.connections / args.rate * 1e3))
    lines += [
        f"- load: `{wrk_cmd.replace(':0/', ':PORT/')}` (the last argument, the pacing delay in "
        f"ms, is corrected per target from the achieved rate of the {args.warmup:g} s warmup "
        f"before each run); {args.repeats} interleaved rounds (order reversed every other "
        "round); medians shown",
        "- backends and targets: as in proxy_bench.py (nginx 1 worker, `hash "
        "$http_x_session_id consistent`, keepalive; wa-router generic profile, memory store)",
        "",
        "| target | target rate | achieved req/s | p50 | p75 | p90 | p99 | errors | proxy CPU "
        "| CPU per request | p99 per round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in targets:
        if not t.runs:
            continue
        cpu = statistics.median(m.proxy_cpu or 0.0 for m in t.runs)
        per_req = cpu / t.median("rps") * 1e6 if t.median("rps") and t.name != "direct" else None
        errors = sum(m.wrk.errors for m in t.runs + t.warmups)
        lines.append(
            f"| {t.label} | {args.rate:,.0f} | {t.median('rps'):,.0f} | {fmt_us(t.median('50'))} "
            f"| {fmt_us(t.median('75'))} | {fmt_us(t.median('90'))} "
            f"| {fmt_us(t.median('99'))} | {errors} "
            f"| {fmt_pct(cpu) if t.name != 'direct' else '-'} "
            f"| {f'{per_req:.0f} us' if per_req is not None else '-'} "
            f"| {', '.join(fmt_us(m.p('99')) for m in t.runs)} |"
        )
    diffs = p99_diffs(targets)
    result: dict[str, Any] = {"rate": args.rate, "connections": args.connections}
    if diffs:
        med = statistics.median(diffs)
        nginx = next(t for t in targets if t.name == "nginx")
        router = next(t for t in targets if t.name == "router")
        of_medians = router.median("99") - nginx.median("99")
        ok = med <= P99_TARGET_US
        lines += [
            "",
            f"- p99 router - nginx: **{fmt_us(med) if med >= 0 else '-' + fmt_us(-med)}** "
            f"(median of the per-round differences: "
            f"{', '.join(f'{d / 1e3:+.2f} ms' for d in diffs)}; difference of the medians "
            f"{of_medians / 1e3:+.2f} ms); target <= 1 ms: {'ok' if ok else 'MISSED'}",
            f"- p50 router - nginx: {(router.median('50') - nginx.median('50')) / 1e3:+.2f} ms",
        ]
        result.update(
            p99_diff_us=med,
            p99_diffs_us=diffs,
            p99_diff_of_medians_us=of_medians,
            p50_diff_us=router.median("50") - nginx.median("50"),
            ok=ok,
        )
    lines += [
        "",
        "CPU: cores used by the proxy during the measured runs (medians); CPU per request = "
        "that / achieved req/s. Latency: wrk's, from when a request is written to when its "
        "response is read, over every request of the run.",
        *noisy_note(m.others_cpu for t in targets for m in t.runs),
    ]
    result["targets"] = {
        t.name: {
            "label": t.label,
            "median_rps": t.median("rps") if t.runs else None,
            "median_latency_us": {k: t.median(k) for k in ("50", "75", "90", "99")}
            if t.runs
            else None,
            "runs": [m.as_dict() for m in t.runs],
            "warmups": [m.as_dict() for m in t.warmups],
        }
        for t in targets
    }
    return "\n".join(lines) + "\n", result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=2000, help="requests per second (2000)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--duration", type=float, default=15, help="seconds per measured run (15)")
    p.add_argument("--warmup", type=float, default=3, help="seconds of warmup, same rate (3)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--sessions", type=int, default=1000, help="distinct X-Session-Id (1000)")
    p.add_argument(
        "--targets",
        default="nginx,router",
        help="comma-separated subset of direct (wrk to backend b1), nginx, router "
        "(default: nginx,router)",
    )
    common_args(p)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or not names:
        p.error(f"--targets: a subset of {','.join(TARGETS)}")
    args.target_names = [n for n in TARGETS if n in names]
    if args.rate <= 0 or args.duration <= 0 or args.warmup <= 0 or args.repeats < 1:
        p.error("--rate, --duration, --warmup and --repeats must be positive")
    if args.connections / args.rate * 1e3 < 2:
        p.error("--connections / --rate must leave >= 2 ms between a connection's requests")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("latency", args, run)


if __name__ == "__main__":
    sys.exit(main())

