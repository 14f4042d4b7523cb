"""Cost growth: router throughput, latency and RSS as sessions and instances grow (issue 8).

    /work/venv/bin/python bench/growth_bench.py [--sessions 1000,10000,100000]
        [--instances 3,50,200] [--duration 5] [--warmup 1] [--repeats 1] [--connections 32]
        [--no-nginx] [--place-timeout 180] [--wait-quiet 15] [--out-dir bench/out] [--keep-tmp]

The cost of routing one request must not depend on how many sessions the map holds or how
many instances the fleet has (apart from memory: RSS grows with every session). For each
instance count I (ascending), on 127.0.0.1:

1. starts one backend nginx (1 worker) listening on I ports (one ``server`` block with I
   ``listen`` lines, answering ``{"ok":true,"node":"<port>"}``), a stub_status server, and
   in front of them nginx (``hash $http_x_session_id consistent`` over the I servers,
   ``keepalive max(64, 4 x I)``) for reference, unless ``--no-nginx``, and a fresh wa-router
   (generic profile, memory store, metrics on, default health checks: I probes a second)
   listing the I instances; waits until /admin/instances shows every one healthy, and
   notes the idle router's CPU over 2 s (what health checks of I instances cost) and RSS;
2. for each session count S (ascending, in the same router): **places** every session
   first: wrk walks ``sess-1`` .. ``sess-S`` in order (``bench/wrk/walk.lua``) until
   /admin/instances counts S sessions, then ``router_sessions`` on /metrics must say S;
3. then ``--repeats`` rounds of nginx and router (order alternating), each a warmup and a
   measured run of ``wrk -t1 -cC --latency -s bench/wrk/sessions.lua URL -- S 1`` (requests
   for random ids among the S placed); after them the map must still hold exactly S;
4. reports per cell (I, S): router req/s, p50/p99, ratio to the first cell (fewest sessions
   and instances), router/nginx and that ratio relative to the first cell's (drift between
   cells minutes apart cancels in it), router RSS after placement, and per instance count
   the RSS per session and the idle CPU.

Target (issue 8): throughput flat, i.e. the largest cell (most sessions, most instances)
>= 0.9 x the first. Exits 1 on an error response, a socket error, a placement that does
not reach S, or a session count that changes during the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import harness as h
import proxy_bench as pb

FLAT_TARGET = 0.9  # issue 8: largest cell >= 0.9 x smallest


@dataclass
class Cell:
    instances: int
    sessions: int
    router: list[h.Measured] = field(default_factory=list)
    nginx: list[h.Measured] = field(default_factory=list)
    placement_s: float | None = None
    placement_rps: float | None = None
    placed: int | None = None  # /admin/instances sum before the runs
    router_sessions: float | None = None  # router_sessions on /metrics before the runs
    after: int | None = None  # /admin/instances sum after the runs
    rss_kib: int | None = None  # router VmRSS after placement
    rss_after_kib: int | None = None  # after the measured runs

    def median(self, which: str, key: str = "rps") -> float | None:
        runs: list[h.Measured] = getattr(self, which)
        if not runs:
            return None
        if key == "rps":
            return statistics.median(m.rps for m in runs)
        return statistics.median(m.p(key) for m in runs)


@dataclass
class Fleet:
    instances: int
    idle_cpu: float | None = None  # router cores used while idle (health checks)
    rss_start_kib: int | None = None
    start_s: float | None = None  # spawn to /readyz


def backend_conf(bench: h.Bench, ports: list[int], status_port: int) -> str:
    listens = "\n".join(f"        listen {h.HOST}:{p} backlog=4096;" for p in ports)
    server = f"""    server {{
{listens}
        default_type application/json;
        location / {{ return 200 '{{"ok":true,"node":"$server_port"}}'; }}
    }}
"""
    return h.nginx_conf(bench.tmp / "backend", h.status_server(status_port) + server)


def proxy_conf(bench: h.Bench, port: int, ports: list[int]) -> str:
    upstream = "\n".join(f"        server {h.HOST}:{p};" for p in ports)
    body = f"""    upstream backends {{
        hash $http_x_session_id consistent;
{upstream}
        keepalive {max(64, 4 * len(ports))};
        keepalive_requests 1000000;
    }}
    server {{
        listen {h.HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    return h.nginx_conf(bench.tmp / f"nginx-proxy-{len(ports)}", body)


def instances_state(admin_port: int) -> tuple[int, int, int]:
    """(instances, healthy ones, sessions placed) from /admin/instances."""
    items = h.admin_json(admin_port, "/admin/instances")
    return (
        len(items),
        sum(1 for i in items if i.get("state") == "healthy"),
        sum(int(i.get("sessions", 0)) for i in items),
    )


def load_argv(args: argparse.Namespace, port: int, sessions: int, duration: float) -> list[str]:
    return [
        *h.wrk_base(args.connections, duration),
        "-s",
        str(pb.LUA_SCRIPT),
        f"http://{h.HOST}:{port}{pb.REQUEST_PATH}",
        "--",
        str(sessions),
        str(pb.LUA_SEED),
    ]


def place(bench: h.Bench, cell: Cell, port: int, admin_port: int) -> None:
    """Walk sess-1..sess-S until the router counts S sessions; note time and counts."""
    args = bench.args
    argv = [
        "wrk", "-t1", f"-c{args.connections}", f"-d{args.place_timeout + 60:g}s", "--latency",
        "-s", str(h.WRK_DIR / "walk.lua"), f"http://{h.HOST}:{port}{pb.REQUEST_PATH}",
        "--", str(cell.sessions),
    ]  # fmt: skip
    _, _, before = instances_state(admin_port)
    t0 = time.monotonic()

    def placed() -> bool:
        return instances_state(admin_port)[2] >= cell.sessions

    ok, out = h.wrk_until(argv, placed, args.place_timeout)
    cell.placement_s = time.monotonic() - t0
    _, _, cell.placed = instances_state(admin_port)
    cell.placement_rps = (cell.placed - before) / cell.placement_s if cell.placement_s else None
    try:
        res = pb.parse_wrk(out)
        if res.errors:
            bench.failures.append(
                f"placement of {cell.sessions} sessions over {cell.instances} instances: "
                f"{h._errors_text(res)}\n{out}"
            )
    except pb.BenchError:
        bench.failures.append(f"placement walk: cannot parse wrk output:\n{out}")
    if not ok or cell.placed != cell.sessions:
        raise pb.BenchError(
            f"placement: /admin/instances counts {cell.placed} sessions over "
            f"{cell.instances} instances after {cell.placement_s:.0f}s, expected "
            f"{cell.sessions}\n{out}"
        )
    cell.router_sessions = h.metric_value(admin_port, "router_sessions")
    if cell.router_sessions != cell.sessions:
        raise pb.BenchError(
            f"placement: /metrics router_sessions {cell.router_sessions}, expected {cell.sessions}"
        )
    print(
        f"  placed {cell.sessions:,} sessions over {cell.instances} instances in "
        f"{cell.placement_s:.1f} s ({cell.placement_rps or 0:,.0f}/s)",
        file=sys.stderr,
        flush=True,
    )


def run(bench: h.Bench) -> tuple[str, dict[str, Any]]:
    args = bench.args
    cells: list[Cell] = []
    fleets: list[Fleet] = []
    for n_inst in args.instance_counts:
        ports = pb.free_ports(n_inst + 1)
        ports, status_port = ports[:-1], ports[-1]
        backend = bench.start_nginx(
            f"backend-{n_inst}", backend_conf(bench, ports, status_port), ports[0], "/ping"
        )
        nginx: pb.Proc | None = None
        nginx_port, router_port, admin_port = pb.free_ports(3)
        if not args.no_nginx:
            nginx = bench.start_nginx(
                f"nginx-proxy-{n_inst}", proxy_conf(bench, nginx_port, ports), nginx_port, "/ping"
            )
        fleet = Fleet(n_inst)
        fleets.append(fleet)
        instances = [(f"b{i:03d}", p) for i, p in enumerate(ports, 1)]
        t0 = time.monotonic()
        router = bench.start_router(
            f"router-{n_inst}", h.router_yaml(router_port, admin_port, instances), router_port
        )
        fleet.start_s = time.monotonic() - t0
        def all_healthy(port: int = admin_port, n: int = n_inst) -> bool:
            return instances_state(port)[1] == n

        if not h.wait_until(all_healthy, 60, 0.5):
            total, healthy, _ = instances_state(admin_port)
            raise pb.BenchError(f"router: {healthy} of {total} instances healthy after 60 s")
        time.sleep(1)
        cpu0, w0 = pb.cpu_seconds(router.pid), time.monotonic()
        time.sleep(2)
        fleet.idle_cpu = (pb.cpu_seconds(router.pid) - cpu0) / (time.monotonic() - w0)
        fleet.rss_start_kib = pb.memory_kib(router.pid).get("VmRSS")
        print(
            f"instances {n_inst}: router up in {fleet.start_s:.1f} s, idle CPU "
            f"{pb.fmt_pct(fleet.idle_cpu)}, RSS {(fleet.rss_start_kib or 0) / 1024:.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
        for n_sess in args.session_counts:
            cell = Cell(n_inst, n_sess)
            cells.append(cell)
            place(bench, cell, router_port, admin_port)
            cell.rss_kib = pb.memory_kib(router.pid).get("VmRSS")
            pairs: list[tuple[str, int, pb.Proc]] = [("router", router_port, router)]
            if nginx is not None:
                pairs.insert(0, ("nginx", nginx_port, nginx))
            for rnd in range(1, args.repeats + 1):
                for name, port, proc in pairs if rnd % 2 else list(reversed(pairs)):
                    what = f"{name} {n_inst} instances, {n_sess} sessions, round {rnd}"
                    if args.warmup > 0:
                        h.measure(
                            bench, load_argv(args, port, n_sess, args.warmup), args.warmup,
                            proc, backend, what + " (warmup)", retries=False,
                        )  # fmt: skip
                    m, _ = h.measure(
                        bench, load_argv(args, port, n_sess, args.duration), args.duration,
                        proc, backend, what, status_port=status_port,
                    )  # fmt: skip
                    getattr(cell, name).append(m)
                    print(
                        f"  {what}: {m.rps:,.0f} req/s  p50 {pb.fmt_us(m.p('50'))}  p99 "
                        f"{pb.fmt_us(m.p('99'))}  errors {m.wrk.errors}  (CPU: proxy "
                        f"{pb.fmt_pct(m.proxy_cpu)}, others {pb.fmt_pct(m.others_cpu)}; "
                        f"upstream conns opened {m.backend_accepts})",
                        file=sys.stderr,
                        flush=True,
                    )
            _, _, cell.after = instances_state(admin_port)
            cell.rss_after_kib = pb.memory_kib(router.pid).get("VmRSS")
            if cell.after != n_sess:
                bench.failures.append(
                    f"{n_inst} instances: {cell.after} sessions after the runs, expected {n_sess}"
                )
        bench.stop(router)
        if nginx is not None:
            bench.stop(nginx)
        bench.stop(backend)
    return render(bench, cells, fleets)


def _median_of(runs: list[h.Measured], attr: str) -> float | None:
    values = [float(v) for m in runs if (v := getattr(m, attr)) is not None]
    return statistics.median(values) if values else None


def _fmt_int(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(bench: h.Bench, cells: list[Cell], fleets: list[Fleet]) -> tuple[str, dict[str, Any]]:
    args = bench.args
    lines = h.header_lines("Cost growth: sessions x instances", bench.started, bench.info)
    lines += [
        f"- load per cell: `{' '.join(load_argv(args, 0, 0, args.duration))}`"
        .replace(":0/", ":PORT/").replace("-- 0 ", "-- S ")
        + f" after a {args.warmup:g} s warmup; {args.repeats} round(s) of "
        + ("nginx and router (order alternating)" if not args.no_nginx else "router")
        + "; medians",
        "- placement before each cell: `wrk -t1 -c"
        f"{args.connections} -s bench/wrk/walk.lua URL -- S` (sess-1..sess-S in order) until "
        "/admin/instances counts S sessions; /metrics `router_sessions` checked equal to S",
        "- backends: one nginx, 1 worker, I `listen` ports in one server block; router: "
        "generic profile, memory store, metrics on, default health checks (1 s interval: I "
        "probes a second); nginx: `hash $http_x_session_id consistent`, `keepalive max(64, "
        "4 x I)`",
        "",
        "| instances | sessions | router req/s | p50 | p99 | ratio to first cell | nginx req/s "
        "| router / nginx | (router / nginx) / first cell's | router RSS | router CPU "
        "| upstream conns, router / nginx | placement |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    first = cells[0] if cells else None
    base = first.median("router") if first else None
    base_rel = _ratio(base, first.median("nginx")) if first else None
    out_cells: list[dict[str, Any]] = []
    for c in cells:
        rps = c.median("router")
        nginx_rps = c.median("nginx")
        rel = _ratio(rps, nginx_rps)
        lines.append(
            f"| {c.instances} | {c.sessions:,} | "
            + (f"{rps:,.0f}" if rps is not None else "-")
            + f" | {pb.fmt_us(c.median('router', '50') or 0)} "
            f"| {pb.fmt_us(c.median('router', '99') or 0)} | {_fmt_ratio(_ratio(rps, base))} "
            f"| {f'{nginx_rps:,.0f}' if nginx_rps is not None else '-'} "
            f"| {_fmt_ratio(rel)} | {_fmt_ratio(_ratio(rel, base_rel))} "
            f"| {(c.rss_kib or 0) / 1024:.1f} MiB "
            f"| {pb.fmt_pct(_median_of(c.router, 'proxy_cpu'))} "
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
                "nginx_rps": c.median("nginx"),
                "ratio_to_first": _ratio(rps, base),
                "router_over_nginx": rel,
                "router_over_nginx_rel_first": _ratio(rel, base_rel),
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
    for f in fleets:
        mine = [c for c in cells if c.instances == f.instances and c.rss_kib]
        per_session = ""
        if len(mine) >= 2 and mine[-1].sessions > mine[0].sessions:
            lo, hi = mine[0], mine[-1]
            b = ((hi.rss_kib or 0) - (lo.rss_kib or 0)) * 1024 / (hi.sessions - lo.sessions)
            per_session = (
                f"; RSS per session {b:,.0f} bytes (from {lo.sessions:,} to {hi.sessions:,})"
            )
        lines.append(
            f"- {f.instances} instances: router up in {f.start_s or 0:.1f} s, RSS "
            f"{(f.rss_start_kib or 0) / 1024:.1f} MiB after start, idle CPU "
            f"{pb.fmt_pct(f.idle_cpu)} (health checks){per_session}"
        )
    result: dict[str, Any] = {"cells": out_cells, "fleets": [vars(f) for f in fleets]}
    if len(cells) >= 2 and base:
        last = max(cells, key=lambda c: (c.sessions, c.instances))
        flat = _ratio(last.median("router"), base)
        flat_rel = _ratio(_ratio(last.median("router"), last.median("nginx")), base_rel)
        worst = min(
            ((_ratio(c.median("router"), base) or 0.0, c) for c in cells), key=lambda x: x[0]
        )
        ok = flat is not None and flat >= FLAT_TARGET
        lines += [
            "",
            f"- flat? router at {last.sessions:,} sessions / {last.instances} instances vs "
            f"{cells[0].sessions:,} / {cells[0].instances}: **{_fmt_ratio(flat)}** "
            f"(relative to nginx in the same cells: {_fmt_ratio(flat_rel)}); lowest cell "
            f"{worst[0]:.2f} ({worst[1].sessions:,} / {worst[1].instances}); target >= "
            f"{FLAT_TARGET}: {'ok' if ok else 'MISSED'}",
        ]
        result.update(
            flat_ratio=flat,
            flat_ratio_vs_nginx=flat_rel,
            worst_ratio=worst[0],
            first_cell=[cells[0].sessions, cells[0].instances],
            last_cell=[last.sessions, last.instances],
            ok=ok,
        )
    lines += [
        "",
        "Cells run one after another (minutes apart, in one router per instance count, the "
        "sessions growing): the router / nginx column, relative to the first cell's, cancels "
        "drift of the machine between cells. RSS: the router's VmRSS after placing the cell's "
        "sessions (before its runs). Router CPU: cores the router used during its measured "
        "runs. Upstream conns: new connections the backends accepted during a measured run "
        "(medians): a proxy that keeps its upstream connections alive opens ~none once warm.",
        *h.noisy_note([m for c in cells for m in c.router + c.nginx]),
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
    p.add_argument("--repeats", type=int, default=1, help="rounds per cell; medians (1)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument("--no-nginx", action="store_true", help="router only, no nginx reference")
    p.add_argument(
        "--place-timeout", type=float, default=180, help="max seconds to place a cell (180)"
    )
    h.common_args(p)
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
    return h.run_main("growth", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
