"""The proxy benchmark's targets and their runs, and its markdown report: the main table,
what metrics cost (issue 6), what idempotency keys cost requests without the header
(issue 17) and what the access log costs, the Redis store (issue 3) and
``listen.workers: 2``."""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shlex
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import HOST
from bench.lib.noisy import NOISY
from bench.lib.procs import Proc
from bench.lib.redis_probe import OTHER, RedisProbe, fmt_commands
from bench.lib.report import command_line, fmt_pct, fmt_us
from bench.lib.wrk import LUA_SCRIPT, LUA_SEED, REQUEST_PATH, WrkResult, wrk_base

ALL_TARGETS = (
    "direct", "nginx", "haproxy", "router-nokeys", "router", "router-pure", "router-nometrics",
    "router-accesslog", "router-redis", "router-workers2",
)  # fmt: skip
# targets that are a wa-router process (router-workers2: a master and two workers)
ROUTERS = ("router-nokeys", "router", "router-pure", "router-nometrics", "router-accesslog",
           "router-redis", "router-workers2")
PURE = "router-pure"  # the router's config, its data path run as Python (WA_ROUTER_PURE=1)
WORKERS2 = "router-workers2"  # listen.workers: 2, Redis store (its own redis-server)
METRICS_PAIR = ("router", "router-nometrics")  # metrics on / off, same config otherwise
METRICS_TARGET = 0.95  # issue 6: router / router-nometrics >= 0.95 (cost <= 5%)
# listen.idempotency_keys on (the default) / off, same config otherwise; the load carries
# no Idempotency-Key: what the feature costs the requests without it
KEYS_PAIR = ("router", "router-nokeys")
KEYS_TARGET = 0.98  # issue 17: router / router-nokeys >= 0.98 (cost <= 2%)
ACCESS_PAIR = ("router-accesslog", "router")  # access log (JSON, to a file) on / off
ACCESS_TARGET = 0.95  # issue 17: router-accesslog / router >= 0.95 (cost <= 5%)
# Compared pairwise, each round: their order is reversed every other round (round_order)
PAIRED = ("router-nokeys", "router", "router-nometrics", "router-accesslog")


@dataclass
class Target:
    """A proxy under test (or the backend, for ``direct``) and its runs."""

    name: str
    label: str
    port: int
    proc: Proc | None  # the process under test (None: no proxy in between)
    runs: list[WrkResult] = field(default_factory=list)
    warmups: list[WrkResult] = field(default_factory=list)
    discarded: list[WrkResult] = field(default_factory=list)  # noisy runs done again
    placement: dict[str, str] = field(default_factory=dict)  # session -> backend node
    redis: RedisProbe | None = None  # router-redis: a probe on its redis-server
    redis_proc: Proc | None = None
    redis_port: int | None = None
    redis_first_warmup: dict[str, int] | None = None  # the one that placed the sessions
    redis_client_names: list[str] = field(default_factory=list)  # CLIENT LIST at the end
    admin_port: int | None = None  # routers: the admin API (/metrics)
    metrics: bool = False  # a router with metrics on: /metrics is scraped around each run
    idle_scrapes: dict[str, float] | None = None  # /metrics cost on the idle router
    workers: int = 1  # listen.workers (router-workers2: 2)
    access_log: Path | None = None  # router-accesslog: the file its access log goes to

    @property
    def url(self) -> str:
        """What wrk requests."""
        return f"http://{HOST}:{self.port}{REQUEST_PATH}"

    def errors(self) -> int:
        """Errors in every run, warmups and discarded noisy runs included."""
        return sum(r.errors for r in self.runs + self.warmups + self.discarded)

    def median(self, key: str) -> float:
        """Median over the runs of req/s (``rps``) or a latency percentile ("50", "99")."""
        if key == "rps":
            return statistics.median(r.rps for r in self.runs)
        return statistics.median(r.latency_us[key] for r in self.runs)

    def median_int(self, which: str) -> int:
        return round(statistics.median(getattr(r, which) or 0 for r in self.runs))

    def max_cpu(self, which: str) -> float | None:
        values = [getattr(r, which) for r in self.runs if getattr(r, which) is not None]
        return max(values) if values else None

    def median_cpu(self, which: str) -> float | None:
        values = [getattr(r, which) for r in self.runs if getattr(r, which) is not None]
        return statistics.median(values) if values else None


def wrk_argv(args: argparse.Namespace, url: str, duration: float) -> list[str]:
    """The load: ``bench/wrk/sessions.lua``, X-Session-Id drawn from ``--sessions`` ids."""
    return [
        *wrk_base(args.connections, duration, args.threads),
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(args.sessions),
        str(LUA_SEED),
    ]


def render(
    args: argparse.Namespace,
    targets: list[Target],
    info: dict[str, str],
    started: dt.datetime,
    rss: dict[str, dict[str, int]],
) -> str:
    """The report: the main table, its notes, then each section."""
    nginx = next((t for t in targets if t.name == "nginx" and t.runs), None)
    base = nginx.median("rps") if nginx else None
    cmd = command_line()
    wrk_cmd = shlex.join(wrk_argv(args, f"http://{HOST}:PORT{REQUEST_PATH}", args.duration))
    lines = [
        f"## Proxy benchmark, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{cmd}`",
        f"- load: `{wrk_cmd}` against each target, each run after a {args.warmup:g} s warmup "
        f"(same command, `-d{args.warmup:g}s`); {args.repeats} interleaved rounds of "
        f"{', '.join(t.name for t in targets)}"
        + (
            f" ({', '.join(n for n in PAIRED if n in {t.name for t in targets})} in reverse "
            "order every other round)"
            if len({t.name for t in targets} & set(PAIRED)) > 1
            else ""
        )
        + "; medians shown",
        "- backends: one nginx, 1 worker, 3 servers b1..b3 returning "
        '`{"ok":true,"node":"bN"}` (application/json); every target on 127.0.0.1',
        "- machine: "
        + ", ".join(
            [
                f"{info['nproc']} CPUs ({info['cpu']})",
                info["kernel"],
                info["python"],
                f"nginx {info['nginx']}",
                info["haproxy"],
                info["wrk"],
                info["redis"],
                f"wa-router {info['wa-router']}",
            ]
        ),
        "",
        "| target | req/s | p50 | p99 | errors | ratio to nginx | proxy CPU | backend CPU "
        "| others CPU | upstream conns | req/s per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in targets:
        if not t.runs:
            lines.append(f"| {t.label} | - | - | - | {t.errors()} | - | - | - | - | - | (no run) |")
            continue
        rps = t.median("rps")
        ratio = "—" if t.name == "direct" or base is None else f"{rps / base:.2f}"
        per_run = ", ".join(f"{r.rps:,.0f}" for r in t.runs)
        lines.append(
            f"| {t.label} | {rps:,.0f} | {fmt_us(t.median('50'))} | {fmt_us(t.median('99'))} "
            f"| {t.errors()} | {ratio} | {fmt_pct(t.median_cpu('proxy_cpu'))} "
            f"| {fmt_pct(t.median_cpu('backend_cpu'))} | {fmt_pct(t.max_cpu('others_cpu'))} "
            f"| {t.median_int('backend_accepts'):,} | {per_run} |"
        )
    lines += [
        "",
        "errors: non-2xx (wrk counts statuses >= 400) + socket errors, warmups and noisy "
        "runs done again included. "
        "CPU: cores used during the measured runs (100% = one core; medians), by the proxy's "
        "process tree and the backend nginx; wrk takes the rest of the 2 cores. "
        "others: the most that processes not started by this benchmark used in any run "
        "(a test suite running alongside, say): above ~10%, the numbers are noisy. "
        "upstream conns: new connections the backends accepted during a measured run "
        "(median): a proxy that keeps its upstream connections alive opens ~none once warm.",
    ]
    for t in targets:
        churn = [r for r in t.runs if (r.backend_accepts or 0) > max(100, r.requests // 100)]
        if t.name != "direct" and churn:
            r = churn[0]
            lines.append(
                f"WARNING: {t.name} opened {r.backend_accepts:,} upstream connections for "
                f"{r.requests:,} requests: it does not reuse its upstream connections."
            )
    noisy = [t.name for t in targets if (t.max_cpu("others_cpu") or 0) > NOISY]
    if noisy:
        lines.append(
            f"WARNING: other processes used more than 10% of a core during runs of "
            f"{', '.join(noisy)}: rerun on a quiet machine before trusting these numbers."
        )
    for name in ROUTERS:
        if name in rss:
            mem = rss[name]
            procs_note = (
                f" (sum of {mem.get('end_processes', 0)} processes: master + workers)"
                if mem.get("end_processes", 1) > 1
                else ""
            )
            lines.append(
                f"Router RSS ({name}){procs_note}: "
                f"{mem.get('start_VmRSS', 0) / 1024:.1f} MiB after start, "
                f"{mem.get('end_VmRSS', 0) / 1024:.1f} MiB after the runs "
                f"(peak {mem.get('end_VmHWM', 0) / 1024:.1f} MiB), having routed "
                f"{args.sessions} distinct session ids."
            )
    lines += render_metrics(args, targets, nginx)
    lines += render_keys(targets, nginx)
    lines += render_access(targets)
    lines += render_redis(targets, base)
    lines += render_workers(args, targets, base)
    return "\n".join(lines) + "\n"


def pair_cost(
    targets: list[Target], pair: tuple[str, str], target: float
) -> dict[str, object] | None:
    """``pair[0]`` / ``pair[1]`` (a feature on / off, the same config otherwise), per round
    (both ran in the same round) and as medians: what the feature costs; ``ok`` when the
    median of the per-round ratios is >= ``target``."""
    on = next((t for t in targets if t.name == pair[0] and t.runs), None)
    off = next((t for t in targets if t.name == pair[1] and t.runs), None)
    if on is None or off is None:
        return None
    pairs = list(zip(on.runs, off.runs, strict=False))
    ratios = [a.rps / b.rps for a, b in pairs]
    median_ratio = statistics.median(ratios)
    # Rounds in which neither run was noisy (others <= 10% of a core in both).
    quiet = [a.rps / b.rps for a, b in pairs if max(_others(a), _others(b)) <= NOISY]
    # Router CPU per response (us), on / off: less sensitive than req/s to how much of the
    # machine the router got, not to how fast the machine ran at the time.
    cpu = [
        (a.proxy_cpu / a.rps * 1e6, b.proxy_cpu / b.rps * 1e6)
        for a, b in pairs
        if a.proxy_cpu and b.proxy_cpu and a.rps and b.rps
    ]
    return {
        "pair": list(pair),
        "per_round_on": [r.rps for r in on.runs],
        "per_round_off": [r.rps for r in off.runs],
        "per_round_ratio": ratios,
        "median_ratio": median_ratio,
        "median_ratio_ci95": bootstrap_median_ci(ratios),
        "ratio_of_medians": on.median("rps") / off.median("rps"),
        "quiet_rounds": len(quiet),
        "quiet_median_ratio": statistics.median(quiet) if quiet else None,
        "per_round_cpu_us": cpu,
        "median_cpu_ratio": statistics.median(b / a for a, b in cpu) if cpu else None,
        "cost": 1 - median_ratio,
        "target": target,
        "ok": median_ratio >= target,
    }


def metrics_cost(targets: list[Target]) -> dict[str, object] | None:
    """router / router-nometrics: what per-request accounting costs (issue 6: >= 0.95)."""
    return pair_cost(targets, METRICS_PAIR, METRICS_TARGET)


def access_cost(targets: list[Target]) -> dict[str, object] | None:
    """router-accesslog / router: what the access log costs (issue 17: >= 0.95)."""
    return pair_cost(targets, ACCESS_PAIR, ACCESS_TARGET)


def keys_cost(targets: list[Target]) -> dict[str, object] | None:
    """router / router-nokeys: what ``listen.idempotency_keys: true`` costs requests that
    carry no Idempotency-Key (issue 17: >= 0.98)."""
    return pair_cost(targets, KEYS_PAIR, KEYS_TARGET)


MIN_ROUNDS_CI = 6  # fewer rounds: a bootstrap interval of their median means nothing


def bootstrap_median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (fixed seed: the same run gives the same
    interval): how far the median of so few noisy rounds can be trusted."""
    rng = random.Random(0)
    n = 4000
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    cut = round(n * (1 - level) / 2)
    return medians[cut], medians[n - 1 - cut]


def pair_verdict(ratios: list[float], median_ratio: float, target: float) -> tuple[str, str]:
    """A feature's on / off verdict against ``target`` and the text of its interval: "ok"
    only when the 95% interval of the median (from MIN_ROUNDS_CI rounds) stays above it,
    "MISSED" only when it stays below (as the suite's table judges, ``_ratio_verdict``)."""
    low, high = bootstrap_median_ci(ratios)  # the same interval as in the JSON
    enough = len(ratios) >= MIN_ROUNDS_CI
    if median_ratio < target:
        verdict = "MISSED" if not enough or high < target else (
            "not resolved (the interval reaches the target): add rounds")
    elif not enough or low < target:
        verdict = "ok, but not resolved (too noisy or too few rounds): add rounds"
    else:
        verdict = "ok"
    interval = (f"95% bootstrap interval of that median {low:.3f}-{high:.3f}" if enough
                else f"no interval with fewer than {MIN_ROUNDS_CI} rounds")
    return verdict, interval


def _others(r: WrkResult) -> float:
    return r.others_cpu or 0.0


def render_metrics(
    args: argparse.Namespace, targets: list[Target], nginx: Target | None
) -> list[str]:
    """The metrics section: router (metrics on) against router-nometrics, round by round,
    and what scraping /metrics under load showed."""
    cost = metrics_cost(targets)
    on = next((t for t in targets if t.name == METRICS_PAIR[0] and t.runs), None)
    off = next((t for t in targets if t.name == METRICS_PAIR[1] and t.runs), None)
    if cost is None or on is None or off is None:
        return []
    lines = [
        "",
        "### Metrics cost (issue 6)",
        "",
        "| round | order | router (metrics on) req/s | router-nometrics req/s "
        "| on / off | router CPU per response, on / off | others CPU, on / off "
        "| nginx req/s (reference) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = cost["per_round_ratio"]
    assert isinstance(ratios, list)
    for i, (a, b, ratio) in enumerate(zip(on.runs, off.runs, ratios, strict=False), 1):
        order = "on, off" if i % 2 else "off, on"
        ref = f"{nginx.runs[i - 1].rps:,.0f}" if nginx is not None and i <= len(nginx.runs) else "-"
        lines.append(
            f"| {i} | {order} | {a.rps:,.0f} | {b.rps:,.0f} | {ratio:.3f} "
            f"| {_cpu_per_response(a)} / {_cpu_per_response(b)} "
            f"| {fmt_pct(a.others_cpu)} / {fmt_pct(b.others_cpu)} | {ref} |"
        )
    ref = f"{nginx.median('rps'):,.0f}" if nginx is not None else "-"
    cpu_ratio = cost["median_cpu_ratio"]
    lines.append(
        f"| median | | {on.median('rps'):,.0f} | {off.median('rps'):,.0f} "
        f"| **{cost['median_ratio']:.3f}** | "
        + (f"off / on: {cpu_ratio:.3f}" if isinstance(cpu_ratio, float) else "-")
        + f" | | {ref} |"
    )
    median_ratio = cost["median_ratio"]
    assert isinstance(median_ratio, float)
    verdict, interval = pair_verdict(ratios, median_ratio, METRICS_TARGET)
    lines += [
        "",
        f"- router / router-nometrics: **{median_ratio:.3f}** (median of the per-round "
        f"ratios; {interval}; ratio of the "
        f"medians {cost['ratio_of_medians']:.3f}, per-round range "
        f"{min(ratios):.3f}-{max(ratios):.3f}): metrics cost **{cost['cost']:.1%}** of "
        f"throughput; target <= {1 - METRICS_TARGET:.0%} (ratio >= {METRICS_TARGET}): "
        f"{verdict}",
        f"- rounds where neither run was noisy (others <= {NOISY:.0%} of a core): "
        f"{cost['quiet_rounds']} of {len(ratios)}"
        + (
            f", median on / off **{cost['quiet_median_ratio']:.3f}**"
            if isinstance(cost["quiet_median_ratio"], float)
            else ""
        ),
        "- router CPU per response (CPU time of the router over the run / responses): "
        + (
            f"median of the per-round off / on ratios **{cpu_ratio:.3f}**, i.e. accounting "
            f"takes {1 - cpu_ratio:.1%} of the router's CPU per response"
            if isinstance(cpu_ratio, float)
            else "-"
        )
        + "; steadier than req/s when the router did not get a whole core, but it still "
        "moves with the machine's speed (another VM on the host)",
        f"- latency, metrics on / off: p50 {fmt_us(on.median('50'))} / "
        f"{fmt_us(off.median('50'))}, p99 {fmt_us(on.median('99'))} / "
        f"{fmt_us(off.median('99'))}; router CPU {fmt_pct(on.median_cpu('proxy_cpu'))} / "
        f"{fmt_pct(off.median_cpu('proxy_cpu'))}",
    ]
    if nginx is not None:
        base = nginx.median("rps")
        lines.append(
            f"- ratio to nginx: router {on.median('rps') / base:.2f}, router-nometrics "
            f"{off.median('rps') / base:.2f}"
        )
    scrapes = [s for r in on.runs for s in (r.scrapes or []) if 0 <= s.at <= args.duration]
    if scrapes:
        ms = sorted(s.seconds * 1e3 for s in scrapes)
        counted = [(r.metrics_counted, r.requests) for r in on.runs if r.scrapes]
        lines.append(
            f"- GET /metrics under load (router, {args.scrapes} per measured run): "
            f"{len(scrapes)} scrapes, all {', '.join(sorted({str(s.status) for s in scrapes}))}"
            f", {statistics.median(s.size for s in scrapes):,.0f} bytes, answered in "
            f"{statistics.median(ms):.1f} ms (median; max {ms[-1]:.1f} ms) while wrk kept "
            f"{args.connections} connections busy. router_requests_total grew by "
            + ", ".join(f"{c:,}" if c is not None else "?" for c, _ in counted)
            + " over the measured runs (wrk received "
            + ", ".join(f"{n:,}" for _, n in counted)
            + "): every response counted."
        )
    idle = on.idle_scrapes
    if idle:
        cpu_ms = idle["cpu_ms_per_scrape"]
        lines.append(
            f"- one scrape of the idle router: {cpu_ms:.2f} ms of router CPU "
            f"({idle['scrapes']:.0f} in a row; answered in {idle['median_ms']:.1f} ms), "
            f"i.e. {cpu_ms / 15e3:.3%} of a core at Prometheus' default 15 s interval"
        )
    lines.append(
        "- router-nometrics: `metrics: {enabled: false}` (per-request accounting is a no-op, "
        "GET /metrics answered 404, checked before the runs); otherwise the same config and "
        "load as router. The two swap places every other round; the per-round ratio compares "
        "runs a few seconds apart, so its median is the figure to read on a noisy machine."
    )
    return lines


def render_access(targets: list[Target]) -> list[str]:
    """The access log section: router-accesslog against router, round by round."""
    cost = access_cost(targets)
    on = next((t for t in targets if t.name == ACCESS_PAIR[0] and t.runs), None)
    off = next((t for t in targets if t.name == ACCESS_PAIR[1] and t.runs), None)
    if cost is None or on is None or off is None:
        return []
    ratios = cost["per_round_ratio"]
    median_ratio, cpu_ratio = cost["median_ratio"], cost["median_cpu_ratio"]
    assert isinstance(ratios, list) and isinstance(median_ratio, float)
    lines = [
        "",
        "### Access log cost",
        "",
        "| round | router-accesslog req/s | router req/s | on / off "
        "| router CPU per response, on / off | others CPU, on / off | access log lines |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, (a, b, ratio) in enumerate(zip(on.runs, off.runs, ratios, strict=False), 1):
        lines.append(
            f"| {i} | {a.rps:,.0f} | {b.rps:,.0f} | {ratio:.3f} "
            f"| {_cpu_per_response(a)} / {_cpu_per_response(b)} "
            f"| {fmt_pct(a.others_cpu)} / {fmt_pct(b.others_cpu)} "
            f"| {'-' if a.access_lines is None else f'{a.access_lines:,}'} |"
        )
    verdict, interval = pair_verdict(ratios, median_ratio, ACCESS_TARGET)
    lines += [
        "",
        f"- router-accesslog / router: **{median_ratio:.3f}** (median of the per-round "
        f"ratios; {interval}; ratio of the medians {cost['ratio_of_medians']:.3f}): the "
        f"access log costs **{cost['cost']:.1%}** of throughput; target <= "
        f"{1 - ACCESS_TARGET:.0%}: {verdict}",
        "- router CPU per response, off / on: "
        + (f"**{cpu_ratio:.3f}** (the access log takes {1 - cpu_ratio:.1%} of the router's "
           "CPU per response)" if isinstance(cpu_ratio, float) else "-"),
        "- router-accesslog: the `router` config plus `log.access: {enabled: true, format: "
        "json, path: <file>}` (every request logged, the file emptied before each warmup and "
        "its lines counted after each run: at least one per response). The two swap places "
        "every other round.",
    ]
    return lines


def _cpu_per_response(r: WrkResult) -> str:
    return f"{r.proxy_cpu / r.rps * 1e6:.1f} us" if r.proxy_cpu and r.rps else "-"


def render_keys(targets: list[Target], nginx: Target | None) -> list[str]:
    """The idempotency keys section: router (``listen.idempotency_keys: true``, the
    default) against router-nokeys (false), round by round, under a load without the
    header: what the feature costs the requests that do not use it (issue 17: <= 2%)."""
    cost = keys_cost(targets)
    on = next((t for t in targets if t.name == KEYS_PAIR[0] and t.runs), None)
    off = next((t for t in targets if t.name == KEYS_PAIR[1] and t.runs), None)
    if cost is None or on is None or off is None:
        return []
    ratios = cost["per_round_ratio"]
    median_ratio = cost["median_ratio"]
    assert isinstance(ratios, list) and isinstance(median_ratio, float)
    lines = [
        "",
        "### Idempotency keys enabled, header absent (issue 17)",
        "",
        "| round | router (keys on) req/s | router-nokeys req/s | on / off "
        "| router CPU per response, on / off | others CPU, on / off | nginx req/s (reference) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, (a, b, ratio) in enumerate(zip(on.runs, off.runs, ratios, strict=False), 1):
        ref = f"{nginx.runs[i - 1].rps:,.0f}" if nginx is not None and i <= len(nginx.runs) else "-"
        lines.append(
            f"| {i} | {a.rps:,.0f} | {b.rps:,.0f} | {ratio:.3f} "
            f"| {_cpu_per_response(a)} / {_cpu_per_response(b)} "
            f"| {fmt_pct(a.others_cpu)} / {fmt_pct(b.others_cpu)} | {ref} |"
        )
    verdict, interval = pair_verdict(ratios, median_ratio, KEYS_TARGET)
    cpu_ratio = cost["median_cpu_ratio"]
    lines += [
        "",
        f"- router / router-nokeys: **{median_ratio:.3f}** (median of the per-round ratios; "
        f"{interval}; ratio of the medians {cost['ratio_of_medians']:.3f}, per-round range "
        f"{min(ratios):.3f}-{max(ratios):.3f}): the keys cost requests without the header "
        f"**{cost['cost']:.1%}** of throughput; target <= {1 - KEYS_TARGET:.0%} (ratio >= "
        f"{KEYS_TARGET}): {verdict}",
        "- router CPU per response: "
        + (
            f"median of the per-round off / on ratios **{cpu_ratio:.3f}**"
            if isinstance(cpu_ratio, float)
            else "-"
        )
        + f"; latency on / off: p50 {fmt_us(on.median('50'))} / {fmt_us(off.median('50'))}, "
        f"p99 {fmt_us(on.median('99'))} / {fmt_us(off.median('99'))}",
        "- router-nokeys: `listen.idempotency_keys: false`, otherwise the router's config and "
        "load (GETs, no Idempotency-Key; metrics on, scraped alike); the paired routers run "
        "in reverse order every other round. The keyed path itself (POSTs with a key, Redis) "
        "is measured by `idempotency_bench.py`.",
    ]
    return lines


def render_redis(targets: list[Target], nginx_rps: float | None) -> list[str]:
    """The Redis store section: throughput against the memory store (issue 3: >= 0.9)
    and Redis commands per cached request (issue 3: 0)."""
    rr = next((t for t in targets if t.name == "router-redis" and t.runs), None)
    if rr is None:
        return []
    mem = next((t for t in targets if t.name == "router" and t.runs), None)
    lines = ["", "### Redis store (issue 3)", ""]
    rps = rr.median("rps")
    if mem is not None:
        ratio = rps / mem.median("rps")
        # Rounds are interleaved and the two routers run back to back in each, so the
        # per-round ratios show how much of the difference is drift.
        per_round = ", ".join(
            f"{a.rps / b.rps:.2f}" for a, b in zip(rr.runs, mem.runs, strict=False)
        )
        lines.append(
            f"- router-redis / router (memory): **{ratio:.2f}** (medians {rps:,.0f} / "
            f"{mem.median('rps'):,.0f} req/s; per round: {per_round}); target >= 0.9: "
            f"{'ok' if ratio >= 0.9 else 'MISSED'}"
        )
    if nginx_rps:
        lines.append(f"- router-redis / nginx: {rps / nginx_rps:.2f}")
    requests = sum(r.requests for r in rr.runs)
    merged: Counter[str] = Counter()
    for r in rr.runs:
        merged.update(r.redis_commands or {})
    commands = sum(merged.values())
    # Timer-driven commands (the leader lease renewal every leader_ttl/3, the pub/sub
    # keepalive PING after 5 s of silence) follow the run's duration, not its requests:
    # MONITOR tells them apart; anything else would be caused by requests.
    causes: dict[str, Counter[str]] = {}
    for r in rr.runs:
        for cause, counts in (r.redis_monitor or {}).items():
            causes.setdefault(cause, Counter()).update(counts)
    other = sum(causes.get(OTHER, Counter()).values())
    lines.append(
        f"- Redis commands per cached request: **{commands / max(requests, 1):.4f}** "
        f"({commands:,} commands over {requests:,} requests in {len(rr.runs)} measured "
        f"runs: {fmt_commands(dict(merged))})"
    )
    lines.append(
        "- by cause (MONITOR): "
        + "; ".join(f"{k}: {fmt_commands(dict(v))}" for k, v in causes.items())
        + f". Caused by requests (not a timer): **{other}** commands; target 0: "
        f"{'ok' if other == 0 else 'MISSED'}"
    )
    for i, r in enumerate(rr.runs, 1):
        monitored = sum(sum(v.values()) for v in (r.redis_monitor or {}).values())
        lines.append(
            f"  - run {i}: {r.requests:,} requests, {r.redis_assignments} assignments in "
            f"Redis before it; commands during the run: {fmt_commands(r.redis_commands or {})}"
            f" (total_commands_processed: {r.redis_commands_total}; MONITOR saw {monitored});"
            f" during its warmup: {fmt_commands(r.redis_warmup_commands or {})}; "
            f"redis-server CPU {fmt_pct(r.redis_cpu)}"
        )
        for sample in r.redis_monitor_samples or []:
            lines.append(f"    - other: `{sample}`")
    lines.append(
        f"- first warmup (Redis empty before it: it places every session): "
        f"{fmt_commands(rr.redis_first_warmup or {})}"
    )
    lines.append(
        f"- Redis clients at the end (CLIENT LIST): "
        f"{', '.join(f'{n} x{c}' for n, c in sorted(Counter(rr.redis_client_names).items()))}"
    )
    lines.append(
        "Counted with `INFO stats commandstats clients` right before and after each "
        "measured run (after its warmup: every session already placed and cached), minus "
        "this script's own commands (its INFO, HLEN, CLIENT LIST, ECHO). MONITOR runs "
        "during each measured run on its own connection: commands on `bench:leader*` keys "
        "are the leader lease (renewed every leader_ttl/3, a script with GET + PEXPIRE "
        "inside), a PING on the subscribed connection is the store's pub/sub keepalive "
        "(after 5 s without a message), SMEMBERS of `bench:drained` is the drainer picking up "
        "drains made through other routers (once a second); all come from timers, whatever "
        "the request rate; so do SET / MGET of `bench:workers:*` (with `workers: N`, the "
        "workers' counters for /metrics, once a second)."
    )
    return lines


def render_workers(
    args: argparse.Namespace, targets: list[Target], nginx_rps: float | None
) -> list[str]:
    """The ``workers: 2`` section: against nginx, against one worker with the same store
    (router-redis) and the memory store, and how wrk's connections spread over workers."""
    w = next((t for t in targets if t.name == WORKERS2 and t.runs), None)
    if w is None:
        return []
    rps = w.median("rps")
    lines = ["", "### `listen.workers: 2` (Redis store)", ""]
    ratios = [f"router-workers2 / nginx: **{rps / nginx_rps:.2f}**" if nginx_rps else ""]
    for name in ("router-redis", "router"):
        other = next((t for t in targets if t.name == name and t.runs), None)
        if other is not None:
            per_round = ", ".join(
                f"{a.rps / b.rps:.2f}" for a, b in zip(w.runs, other.runs, strict=False)
            )
            ratios.append(
                f"router-workers2 / {name} (1 worker): {rps / other.median('rps'):.2f} "
                f"(per round {per_round})"
            )
    lines.append("- " + "; ".join(r for r in ratios if r))
    shares = [r.worker_cpu for r in w.runs if r.worker_cpu]
    if shares:
        per_run = "; ".join(" / ".join(fmt_pct(c) for c in s) for s in shares)
        masters = ", ".join(fmt_pct(r.master_cpu) for r in w.runs if r.worker_cpu)
        lines.append(
            f"- CPU per worker during the measured runs: {per_run} (master: {masters}); "
            f"the same `wrk -t{args.threads} -c{args.connections}` as every other row: the "
            "kernel hashes each connection to one worker's socket (SO_REUSEPORT), so with "
            f"{args.connections} connections the split is rarely even"
        )
    causes: dict[str, Counter[str]] = {}
    for r in w.runs:
        for cause, counts in (r.redis_monitor or {}).items():
            causes.setdefault(cause, Counter()).update(counts)
    if causes:
        by_requests = sum(causes.get(OTHER, Counter()).values())
        lines.append(
            "- Redis commands during the measured runs, by cause (MONITOR): "
            + "; ".join(f"{k}: {fmt_commands(dict(v))}" for k, v in causes.items())
            + f". Caused by requests (not a timer): **{by_requests}**"
        )
    lines.append(
        "- 2 cores for wrk, the backend nginx, redis-server and both workers: a second "
        "worker can only help if the first one was the bottleneck and a core is left over; "
        "on this machine the figure shows what a second worker costs or gains, not how it "
        "scales on a larger one"
    )
    return lines


# --------------------------------------------------------------------------- main
