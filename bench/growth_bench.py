"""Cost growth: router throughput, latency and RSS as sessions and instances grow (issue 8).

    /work/venv/bin/python bench/growth_bench.py [--sessions 1000,10000,100000]
        [--instances 3,50,200] [--duration 5] [--warmup 1] [--repeats 3] [--connections 32]
        [--no-nginx] [--place-timeout 180] [--wait-quiet 15] [--out-dir bench/out] [--keep-tmp]

The cost of routing one request must not depend on how many sessions the map holds or how
many instances the fleet has (apart from memory: RSS grows with every session). On
127.0.0.1:

1. starts one backend nginx (1 worker) listening on max(I) ports (one ``server`` block,
   answering ``{"ok":true,"node":"<port>"}``) and a stub_status server; for each instance
   count I, unless ``--no-nginx``, an nginx in front of the first I ports (``hash
   $http_x_session_id consistent``, ``keepalive max(64, 4 x I)``) for reference;
2. for each cell (I, S) its own wa-router (generic profile, memory store, metrics on,
   default health checks: I probes a second) over the first I ports: waits until
   /admin/instances shows every one healthy, then **places** every session: wrk walks
   ``sess-1`` .. ``sess-S`` in order (``bench/wrk/walk.lua``) until /admin/instances
   counts S, and ``router_sessions`` on /metrics must say S; then notes every router's
   idle CPU over 2 s (what health checks cost) and RSS;
3. ``--repeats`` rounds; each runs, per instance count, nginx over those I once (with the
   fewest sessions: nginx hashes every request, whatever their number) and every cell's
   router, the whole order reversed every other round; each a warmup and a measured run
   of ``wrk -t1 -cC --latency -s bench/wrk/sessions.lua URL -- S 1`` (requests for random
   ids among the S placed); after them every map must still hold exactly its S;
4. reports per cell: router req/s, p50/p99, ratio to the first cell (fewest sessions and
   instances), router/nginx and that ratio relative to the first cell's, all ratios as the
   median over rounds of the ratio within each round (runs seconds apart: the machine's
   drift over minutes cancels), router RSS after placement, and per instance count the RSS
   per session and the throughput at the most sessions over the fewest.

All routers stay up for the whole run, but only the measured one runs: the others are
parked (SIGSTOP; SIGCONT before their own runs, which start with a warmup), so their health
checks do not load the machine. An earlier version ran cells minutes apart in one growing
router and read the machine's drift as growth.

Target (issue 8): throughput flat from the fewest to the most sessions: the median of the
per-round ratios (most / fewest sessions, same instances, every instance count pooled)
>= 0.9. Also judged against 0.9: router / nginx at the most instances over that at the
fewest (fewest sessions). Exits 1 on an error response, a socket error, a placement that does
not reach S, or a session count that changes during the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib import HOST, WRK_DIR
from bench.lib.admin import get_json, metric_value
from bench.lib.configs import instance_url, nginx_conf, proxy_nginx_conf, router_yaml, status_server
from bench.lib.cpu import cpu_seconds, memory_kib
from bench.lib.harness import Bench, Measured, common_args, measure, run_main
from bench.lib.noisy import noisy_note
from bench.lib.ports import free_ports
from bench.lib.procs import BenchError, Proc, wait_until
from bench.lib.report import fmt_pct, fmt_us, header_lines
from bench.lib.wrk import LUA_SCRIPT, LUA_SEED, REQUEST_PATH, parse_wrk, wrk_base, wrk_until

FLAT_TARGET = 0.9  # issue 8: largest cell >= 0.9 x smallest


@dataclass
class Cell:
    """One (instances, sessions) cell: its own router, placed once, measured every round."""

    instances: int
    sessions: int
    router: list[Measured] = field(default_factory=list)  # one per round, in order
    nginx: list[Measured] = field(default_factory=list)  # nginx over the same I, same load
    proc: Proc | None = None
    port: int = 0
    admin_port: int = 0
    start_s: float | None = None  # spawn to /readyz
    rss_start_kib: int | None = None  # VmRSS once every instance is healthy, no session
    idle_cpu: float | None = None  # cores used while idle, placed (health checks)
    placement_s: float | None = None
    placement_rps: float | None = None
    placed: int | None = None  # /admin/instances sum before the runs
    router_sessions: float | None = None  # router_sessions on /metrics before the runs
    after: int | None = None  # /admin/instances sum after the runs
    rss_kib: int | None = None  # router VmRSS after placement
    rss_after_kib: int | None = None  # after the measured runs

    def median(self, which: str, key: str = "rps") -> float | None:
        runs: list[Measured] = getattr(self, which)
        if not runs:
            return None
        if key == "rps":
            return statistics.median(m.rps for m in runs)
        return statistics.median(m.p(key) for m in runs)


def round_ratio(a: list[Measured], b: list[Measured]) -> float | None:
    """Median over rounds of a[r].rps / b[r].rps: runs of one round are seconds apart, so
    the machine's drift between rounds cancels (medians of each side would not)."""
    pairs = [x.rps / y.rps for x, y in zip(a, b, strict=False) if y.rps]
    return statistics.median(pairs) if pairs else None


def backend_conf(bench: Bench, ports: list[int], status_port: int) -> str:
    listens = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in ports)
    server = f"""    server {{
{listens}
        default_type application/json;
        location / {{ return 200 '{{"ok":true,"node":"$server_port"}}'; }}
    }}
"""
    return nginx_conf(bench.tmp / "backend", status_server(status_port) + server)


def proxy_conf(bench: Bench, port: int, ports: list[int]) -> str:
    """proxy_bench's nginx, with idle upstream connections for every instance."""
    name = f"nginx-proxy-{len(ports)}"
    return proxy_nginx_conf(bench.tmp, port, ports, keepalive=max(64, 4 * len(ports)), name=name)


def instances_state(admin_port: int) -> tuple[int, int, int]:
    """(instances, healthy ones, sessions placed) from /admin/instances."""
    items = get_json(admin_port, "/admin/instances")
    return (
        len(items),
        sum(1 for i in items if i.get("state") == "healthy"),
        sum(int(i.get("sessions", 0)) for i in items),
    )


def load_argv(args: argparse.Namespace, port: int, sessions: int, duration: float) -> list[str]:
    return [
        *wrk_base(args.connections, duration),
        "-s",
        str(LUA_SCRIPT),
        f"http://{HOST}:{port}{REQUEST_PATH}",
        "--",
        str(sessions),
        str(LUA_SEED),
    ]


def place(bench: Bench, cell: Cell, port: int, admin_port: int) -> None:
    """Walk sess-1..sess-S until the router counts S sessions; note time and counts."""
    args = bench.args
    argv = [
        "wrk", "-t1", f"-c{args.connections}", f"-d{args.place_timeout + 60:g}s", "--latency",
        "-s", str(WRK_DIR / "walk.lua"), f"http://{HOST}:{port}{REQUEST_PATH}",
        "--", str(cell.sessions),
    ]  # fmt: skip
    _, _, before = instances_state(admin_port)
    t0 = time.monotonic()

    def placed() -> bool:
        return instances_state(admin_port)[2] >= cell.sessions

    ok, out = wrk_until(argv, placed, args.place_timeout)
    cell.placement_s = time.monotonic() - t0
    _, _, cell.placed = instances_state(admin_port)
    cell.placement_rps = (cell.placed - before) / cell.placement_s if cell.placement_s else None
    try:
        res = parse_wrk(out)
        if res.errors:
            bench.failures.append(
                f"placement of {cell.sessions} sessions over {cell.instances} instances: "
                f"{res.errors_text()}\n{out}"
            )
    except BenchError:
        bench.failures.append(f"placement walk: cannot parse wrk output:\n{out}")
    if not ok or cell.placed != cell.sessions:
        raise BenchError(
            f"placement: /admin/instances counts {cell.placed} sessions over "
            f"{cell.instances} instances after {cell.placement_s:.0f}s, expected "
            f"{cell.sessions}\n{out}"
        )
    cell.router_sessions = metric_value(admin_port, "router_sessions")
    if cell.router_sessions != cell.sessions:
        raise BenchError(
            f"placement: /metrics router_sessions {cell.router_sessions}, expected {cell.sessions}"
        )
    print(
        f"  placed {cell.sessions:,} sessions over {cell.instances} instances in "
        f"{cell.placement_s:.1f} s ({cell.placement_rps or 0:,.0f}/s)",
        file=sys.stderr,
        flush=True,
    )


def start_cell(bench: Bench, cell: Cell, ports: list[int]) -> None:
    """The cell's own router over ``ports``: started, every instance healthy, placed."""
    cell.port, cell.admin_port = free_ports(2)
    instances = [(f"b{i:03d}", instance_url(p)) for i, p in enumerate(ports, 1)]
    t0 = time.monotonic()
    cell.proc = bench.start_router(
        f"router-{cell.instances}-{cell.sessions}",
        router_yaml(cell.port, cell.admin_port, instances),
        cell.port,
    )
    cell.start_s = time.monotonic() - t0

    def all_healthy() -> bool:
        return instances_state(cell.admin_port)[1] == cell.instances

    if not wait_until(all_healthy, 60, 0.5):
        total, healthy, _ = instances_state(cell.admin_port)
        raise BenchError(f"router: {healthy} of {total} instances healthy after 60 s")
    cell.rss_start_kib = memory_kib(cell.proc.pid).get("VmRSS")
    place(bench, cell, cell.port, cell.admin_port)
    cell.rss_kib = memory_kib(cell.proc.pid).get("VmRSS")


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    args = bench.args
    ports = free_ports(max(args.instance_counts) + 1)
    ports, status_port = ports[:-1], ports[-1]
    backend = bench.start_nginx("backend", backend_conf(bench, ports, status_port), ports[0], "/ping")
    cells: list[Cell] = []
    nginx: dict[int, tuple[int, Proc]] = {}
    for n_inst in args.instance_counts:
        mine = ports[:n_inst]
        if not args.no_nginx:
            (port,) = free_ports(1)
            proc = bench.start_nginx(
                f"nginx-proxy-{n_inst}", proxy_conf(bench, port, mine), port, "/ping"
            )
            nginx[n_inst] = (port, proc)
        shared: list[Measured] = []  # nginx over these I: one run per round
        for n_sess in args.session_counts:
            cell = Cell(n_inst, n_sess, nginx=shared)
            cells.append(cell)
            start_cell(bench, cell, mine)
    # What health checks cost: every router idle at once (all are up for every run).
    routers = [c for c in cells if c.proc is not None]
    cpu0 = [cpu_seconds(c.proc.pid) for c in routers if c.proc]
    w0 = time.monotonic()
    time.sleep(2)
    wall = time.monotonic() - w0
    for c, before in zip(routers, cpu0, strict=True):
        assert c.proc is not None
        c.idle_cpu = (cpu_seconds(c.proc.pid) - before) / wall
    print(
        f"{len(routers)} routers up and placed; idle CPU (health checks): "
        + ", ".join(f"{c.instances}/{c.sessions:,} {fmt_pct(c.idle_cpu)}" for c in routers),
        file=sys.stderr,
        flush=True,
    )
    for c in routers:
        park(c)
    try:
        measure_rounds(bench, cells, nginx, backend, status_port)
    finally:
        for c in routers:
            unpark(c)
    for cell in cells:
        _, _, cell.after = instances_state(cell.admin_port)
        if cell.proc is not None:
            cell.rss_after_kib = memory_kib(cell.proc.pid).get("VmRSS")
        if cell.after != cell.sessions:
            bench.failures.append(
                f"{cell.instances} instances: {cell.after} sessions after the runs, "
                f"expected {cell.sessions}"
            )
    return render(bench, cells)


def park(cell: Cell) -> None:
    """SIGSTOP the cell's router (its process group) while other cells are measured: nine
    idle routers' health checks took ~15% of a core, noise the measured one would not see
    in production. Its sockets stay open; SIGCONT resumes it where it was."""
    if cell.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cell.proc.pid, signal.SIGSTOP)


def unpark(cell: Cell) -> None:
    if cell.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cell.proc.pid, signal.SIGCONT)


def measure_rounds(
    bench: Bench,
    cells: list[Cell],
    nginx: dict[int, tuple[int, Proc]],
    backend: Proc,
    status_port: int,
) -> None:
    """Every round runs, per instance count, nginx once (with the fewest sessions: it
    hashes every request whatever their number) then each cell's router; the whole order
    reversed every other round. Only the measured router runs; the others are parked."""
    args = bench.args
    plan: list[tuple[str, Cell]] = []
    for cell in cells:
        if cell.instances in nginx and not any(c.instances == cell.instances for _, c in plan):
            plan.append(("nginx", cell))
        plan.append(("router", cell))
    for rnd in range(1, args.repeats + 1):
        for name, cell in plan if rnd % 2 else list(reversed(plan)):
            assert cell.proc is not None
            if name == "nginx":
                port, proc = nginx[cell.instances]
            else:
                port, proc = cell.port, cell.proc
                unpark(cell)

                def healthy(c: Cell = cell) -> bool:
                    return instances_state(c.admin_port)[1] == c.instances

                # Back from SIGSTOP: a probe in flight then may have timed out; wait for
                # the fleet to read healthy again (the warmup run follows).
                if not wait_until(healthy, 30, 0.2):
                    bench.failures.append(
                        f"{cell.instances}/{cell.sessions}: instances not healthy after SIGCONT"
                    )
            what = f"{name} {cell.instances} instances, {cell.sessions} sessions, round {rnd}"
            if args.warmup > 0:
                measure(
                    bench, load_argv(args, port, cell.sessions, args.warmup), args.warmup,
                    proc, backend, what + " (warmup)", retries=False,
                )  # fmt: skip
            m, _ = measure(
                bench, load_argv(args, port, cell.sessions, args.duration), args.duration,
                proc, backend, what, status_port=status_port,
            )  # fmt: skip
            getattr(cell, name).append(m)  # cells of one instance count share the nginx list
            print(
                f"  {what}: {m.rps:,.0f} req/s  p50 {fmt_us(m.p('50'))}  p99 "
                f"{fmt_us(m.p('99'))}  errors {m.wrk.errors}  (CPU: proxy "
                f"{fmt_pct(m.proxy_cpu)}, our idle processes {fmt_pct(m.idle_cpu)}, "
                f"others {fmt_pct(m.others_cpu)}; upstream conns opened "
                f"{m.backend_accepts})",
                file=sys.stderr,
                flush=True,
            )
            if name == "router":
                park(cell)


def _median_of(runs: list[Measured], attr: str) -> float | None:
    vals = [getattr(m, attr) for m in runs if getattr(m, attr) is not None]
    return statistics.median(vals) if vals else None


def _fmt_int(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else "-"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt_ratio(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "-"


def _rel_rounds(cell: Cell, first: Cell) -> float | None:
    """Median over rounds of (router / nginx in this cell) / (router / nginx in the first)."""
    vals = [
        (r.rps / n.rps) / (r0.rps / n0.rps)
        for r, n, r0, n0 in zip(cell.router, cell.nginx, first.router, first.nginx, strict=False)
        if n.rps and n0.rps and r0.rps
    ]
    return statistics.median(vals) if vals else None


def render(bench: Bench, cells: list[Cell]) -> tuple[str, dict[str, Any]]:
    args = bench.args
    lines = header_lines("Cost growth: sessions x instances", bench.started, bench.info)
    lines += [
        f"- load per cell: `{' '.join(load_argv(args, 0, 0, args.duration))}`"
        .replace(":0/", ":PORT/").replace("-- 0 ", "-- S ")
        + f" after a {args.warmup:g} s warmup; {args.repeats} round(s), each running every "
        "cell's router once" + (" and nginx once per instance count (with the fewest "
        "sessions)" if not args.no_nginx else "")
        + ", the order reversed every other round; medians, and ratios as the median over "
        "rounds of the ratio within each round",
        "- one router per cell, all started and placed before the first run; while one cell "
        "is measured every other router is parked (SIGSTOP of its process group, SIGCONT "
        "before its own cell, then every instance must read healthy and the warmup runs)",
        "- placement before the runs: `wrk -t1 -c"
        f"{args.connections} -s bench/wrk/walk.lua URL -- S` (sess-1..sess-S in order) until "
        "/admin/instances counts S sessions; /metrics `router_sessions` checked equal to S",
        "- backends: one nginx, 1 worker, one `listen` port per instance in one server block "
        "(a cell with I instances uses the first I); router: generic profile, memory store, "
        "metrics on, default health checks (1 s interval: I probes a second); nginx: `hash "
        "$http_x_session_id consistent` over the same I, `keepalive max(64, 4 x I)`",
        "",
        "| instances | sessions | router req/s | p50 | p99 | ratio to first cell | nginx req/s "
        "| router / nginx | (router / nginx) / first cell's | router RSS | router CPU "
        "| idle CPU | upstream conns, router / nginx | placement |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    first = cells[0]
    out_cells: list[dict[str, Any]] = []
    for c in cells:
        rps, nginx_rps = c.median("router"), c.median("nginx")
        to_first = round_ratio(c.router, first.router)
        rel = round_ratio(c.router, c.nginx)
        rel_first = _rel_rounds(c, first)
        lines.append(
            f"| {c.instances} | {c.sessions:,} | {_fmt_int(rps)} "
            f"| {fmt_us(c.median('router', '50') or 0)} "
            f"| {fmt_us(c.median('router', '99') or 0)} | {_fmt_ratio(to_first)} "
            f"| {_fmt_int(nginx_rps)} | {_fmt_ratio(rel)} | {_fmt_ratio(rel_first)} "
            f"| {(c.rss_kib or 0) / 1024:.1f} MiB "
            f"| {fmt_pct(_median_of(c.router, 'proxy_cpu'))} | {fmt_pct(c.idle_cpu)} "
            f"| {_fmt_int(_median_of(c.router, 'backend_accepts'))} / "
            f"{_fmt_int(_median_of(c.nginx, 'backend_accepts'))} "
            f"| {c.placement_s or 0:.1f} s ({c.placement_rps or 0:,.0f}/s) |"
        )
        out_cells.append(
            {
                "instances": c.instances,
                "sessions": c.sessions,
                "router_rps": rps,
                "router_p50_us": c.median("router", "50"),
                "router_p99_us": c.median("router", "99"),
                "nginx_rps": nginx_rps,
                "ratio_to_first": to_first,
                "router_over_nginx": rel,
                "router_over_nginx_rel_first": rel_first,
                "start_s": c.start_s,
                "idle_cpu": c.idle_cpu,
                "rss_start_kib": c.rss_start_kib,
                "rss_kib": c.rss_kib,
                "rss_after_kib": c.rss_after_kib,
                "placement_s": c.placement_s,
                "placement_rps": c.placement_rps,
                "placed": c.placed,
                "router_sessions_metric": c.router_sessions,
                "sessions_after": c.after,
                "router_runs": [m.as_dict() for m in c.router],
                "nginx_runs": [m.as_dict() for m in c.nginx],
            }
        )
    lines.append("")
    by_inst: dict[int, list[Cell]] = {}
    for c in cells:
        by_inst.setdefault(c.instances, []).append(c)
    sessions_flat: dict[int, float | None] = {}
    for n_inst, mine in by_inst.items():
        lo, hi = mine[0], mine[-1]
        per_session = ""
        if hi.sessions > lo.sessions and hi.rss_kib and lo.rss_kib:
            b = (hi.rss_kib - lo.rss_kib) * 1024 / (hi.sessions - lo.sessions)
            per_session = (
                f"; RSS per session {b:,.0f} bytes (from {lo.sessions:,} to {hi.sessions:,})"
            )
        if hi.sessions > lo.sessions:
            sessions_flat[n_inst] = round_ratio(hi.router, lo.router)
            per_session += (
                f"; throughput at {hi.sessions:,} sessions / at {lo.sessions:,}: "
                f"**{_fmt_ratio(sessions_flat[n_inst])}**"
            )
        lines.append(
            f"- {n_inst} instances: routers up in {lo.start_s or 0:.1f} s, RSS "
            f"{(lo.rss_start_kib or 0) / 1024:.1f} MiB after start{per_session}"
        )
    result: dict[str, Any] = {"cells": out_cells, "sessions_flat": sessions_flat}
    # Sessions axis, every instance count pooled: the per-round ratios of the most sessions
    # over the fewest (same instances, runs seconds apart); one noisy round weighs less in
    # the median of all of them than in a median of three or four.
    pooled = [
        x.rps / y.rps
        for mine in by_inst.values()
        if mine[-1].sessions > mine[0].sessions
        for x, y in zip(mine[-1].router, mine[0].router, strict=False)
        if y.rps
    ]
    if pooled:
        sess_flat = statistics.median(pooled)
        sess_ok = sess_flat >= FLAT_TARGET
        lo_s, hi_s = cells[0].sessions, max(c.sessions for c in cells)
        lines += [
            "",
            f"- **sessions**: throughput at {hi_s:,} sessions over {lo_s:,}, the same "
            f"instances: **{sess_flat:.2f}** (median of {len(pooled)} per-round ratios, "
            f"every instance count; range {min(pooled):.2f}-{max(pooled):.2f}); target >= "
            f"{FLAT_TARGET}: {'ok' if sess_ok else 'MISSED'}",
        ]
        result.update(sessions_flat_pooled=sess_flat, sessions_ok=sess_ok, ok=sess_ok)
    firsts = [mine[0] for mine in by_inst.values()]
    if len(firsts) >= 2 and first.nginx:
        wide = firsts[-1]
        inst_rel = _rel_rounds(wide, first)
        inst_ok = inst_rel is not None and inst_rel >= FLAT_TARGET
        lines.append(
            f"- **instances**: router / nginx at {wide.instances} instances over that at "
            f"{first.instances} ({first.sessions:,} sessions): **{_fmt_ratio(inst_rel)}** "
            f"(absolute {_fmt_ratio(round_ratio(wide.router, first.router))}); target >= "
            f"{FLAT_TARGET}: {'ok' if inst_ok else 'MISSED'}"
        )
        result.update(instances_flat_vs_nginx=inst_rel, instances_ok=inst_ok)
    if len(cells) >= 2:
        last = max(cells, key=lambda c: (c.sessions, c.instances))
        flat = round_ratio(last.router, first.router)
        flat_rel = _rel_rounds(last, first)
        worst = min(
            ((round_ratio(c.router, first.router) or 0.0, c) for c in cells), key=lambda x: x[0]
        )
        lines.append(
            f"- both: router at {last.sessions:,} sessions / {last.instances} instances vs "
            f"{first.sessions:,} / {first.instances}: {_fmt_ratio(flat)} (relative to nginx "
            f"in the same rounds: {_fmt_ratio(flat_rel)}); lowest cell {worst[0]:.2f} "
            f"({worst[1].sessions:,} / {worst[1].instances})"
        )
        result.update(
            flat_ratio=flat,
            flat_ratio_vs_nginx=flat_rel,
            worst_ratio=worst[0],
            first_cell=[first.sessions, first.instances],
            last_cell=[last.sessions, last.instances],
        )
    lines += [
        "",
        "Every cell has its own router, all placed before the first run; each round runs every cell, "
        "so the ratio to the first cell compares runs seconds apart (the machine drifts "
        "over minutes). More instances also slow the backends and the kernel (more sockets "
        "on one 2-core machine): nginx over the same instances, in the same round, is the "
        "reference for the instance axis. RSS: the router's VmRSS after placing the cell's "
        "sessions (before its runs). Router CPU: cores the router used during its measured "
        "runs; idle CPU: during 2 s with no traffic, every router up (health checks). "
        "Upstream conns: new connections the backends accepted during a measured run "
        "(medians): a proxy that keeps its upstream connections alive opens ~none once warm.",
        *noisy_note(m.others_cpu for c in cells for m in c.router + c.nginx),
    ]
    return "\n".join(lines) + "\n", result


def _counts(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1000
        out.append(int(float(part) * mult))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sessions", "--growth-sessions", default="1000,10000,100000",
        help="session counts, ascending (1000,10000,100000; 1k, 10k... also work)",
    )  # fmt: skip
    p.add_argument(
        "--instances", "--growth-instances", default="3,50,200",
        help="instance counts (3,50,200)",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=5, help="seconds per measured run (5)")
    p.add_argument("--warmup", type=float, default=1, help="seconds of warmup before each (1)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; medians (3)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--no-nginx", action="store_true", help="router only, no nginx reference")
    p.add_argument(
        "--place-timeout", type=float, default=180, help="max seconds to place a cell (180)"
    )
    common_args(p)
    args = p.parse_args(argv)
    try:
        args.session_counts = sorted(set(_counts(args.sessions)))
        args.instance_counts = sorted(set(_counts(args.instances)))
    except ValueError:
        p.error("--sessions / --instances: comma-separated counts")
    if not args.session_counts or not args.instance_counts or min(args.instance_counts) < 1:
        p.error("--sessions / --instances: at least one positive count each")
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1:
        p.error("--duration and --repeats must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("growth", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
