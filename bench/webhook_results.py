"""The webhook benchmark's servers and runs, and its markdown report: accept rate, nothing
lost, delivery latency, the issue's targets (issue 5)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.lib import HOST
from bench.lib.noisy import NOISY
from bench.lib.procs import Proc
from bench.lib.redis_probe import RedisProbe
from bench.lib.report import command_line, fmt_ms, fmt_pct, fmt_us
from bench.lib.wrk import WrkResult
from bench.webhook_peers import WEBHOOK_PATH

TARGET_RPS = 10_000  # issue 5: events/s accepted
TARGET_P99_MS = 50.0  # issue 5: p99 delivery latency


@dataclass
class Server:
    """A server under test and its own redis-server."""

    name: str
    label: str
    port: int
    proc: Proc
    redis_proc: Proc
    probe: RedisProbe
    stream: str
    runs: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{WEBHOOK_PATH}"

    def median(self, key: str) -> float:
        if key == "rps":
            return statistics.median(r.wrk.rps for r in self.runs)
        return statistics.median(r.wrk.latency_us[key] for r in self.runs)


@dataclass
class Run:
    round: int
    tag: str
    wrk: WrkResult
    warmup: WrkResult | None
    cpu: dict[str, float]
    others_before: float
    wrk_2xx: int  # warmup + measured run
    probe_ok: int
    stored: int  # entries added to the stream during warmup + run (+ probe)
    slack: int  # stored - 2xx: answered after wrk stopped counting (<= connections per wrk run)
    delivered_during_run: int | None = None  # router: distinct events the target got during the run
    delivered: int | None = None  # router: distinct events delivered, warmup + run + drain
    duplicates: int | None = None
    drain_seconds: float | None = None  # router: from the end of the run to an empty stream
    left_in_stream: int | None = None
    stream_len_after_run: int | None = None  # XLEN right after the run (router: the backlog)
    probe: dict[str, Any] | None = None  # probe client's summary
    probe_latency_ms: dict[str, Any] | None = None  # the target's view of the probe events


class Findings(Protocol):
    """What the report reads of a finished benchmark (webhook_bench.WebhookBench)."""

    args: argparse.Namespace
    servers: list[Server]
    failures: list[str]
    paced: dict[str, Any] | None
    router_metrics: dict[str, float]
    final_checks: dict[str, Any]

    def target_stats(self) -> dict[str, Any]: ...

    def wrk_argv(self, url: str, duration: float, tag: str) -> list[str]: ...


def render(b: Findings, info: dict[str, str], started: dt.datetime) -> str:
    """The report: accept rate, nothing lost, delivery latency, the issue's targets."""
    a = b.args
    cmd = command_line()
    url = f"http://{HOST}:PORT{WEBHOOK_PATH}"
    base = next((s for s in b.servers if s.name == "baseline" and s.runs), None)
    router = next((s for s in b.servers if s.name == "router" and s.runs), None)
    base_rps = base.median("rps") if base else None
    lines = [
        f"## Webhook relay benchmark, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        "",
        f"- command: `{cmd}`",
        f"- git commit: `{info['git']}`",
        "- machine: "
        + ", ".join(
            [
                f"{info['nproc']} CPUs ({info['cpu']})",
                info["kernel"],
                info["python"],
                info["libs"],
                info["wrk"],
                info["redis"],
            ]
        ),
        f"- accept load: `{shlex.join(b.wrk_argv(url, a.duration, 'TAG'))}` against each "
        f"server, after a {a.warmup:g} s warmup (same command, `-d{a.warmup:g}s`); "
        f"{a.repeats} interleaved round(s); medians shown. Bodies: WAHA `message` events, "
        f"{_sizes(b, 'wrk')} bytes, {a.wrk_sessions} sessions, a unique id each",
        "- each server has its own fresh `redis-server --appendonly yes --appendfsync everysec "
        '--save ""` (AOF on the local disk); the router\'s config: `store: {url: '
        "redis://127.0.0.1:PORT/0}`, `webhooks: {targets: [{url: http://127.0.0.1:TPORT/hook}]}`"
        ", `log: {level: WARNING}`, one instance (the target process); defaults otherwise "
        "(`ordering: per_session`, delivery concurrency 64)",
        "- target: one process, asyncio + httptools + uvloop, answers 200 at once; records "
        "now - `timestamp` of each delivered event",
        "",
        "### Durable accept rate",
        "",
        "| server | events/s | p50 | p99 | errors | ratio to baseline | server CPU "
        "| server CPU per event | redis CPU | target CPU | wrk (+probe) CPU | others CPU "
        "| events/s per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for s in b.servers:
        if not s.runs:
            lines.append(f"| {s.label} |" + " - |" * 11 + " (no run) |")
            continue
        rps = s.median("rps")
        ratio = f"**{rps / base_rps:.2f}**" if base_rps and s is not base else "1.00"
        errors = sum(r.wrk.errors + (r.warmup.errors if r.warmup else 0) for r in s.runs)
        lines.append(
            f"| {s.label} | **{rps:,.0f}** | {fmt_us(s.median('50'))} | "
            f"{fmt_us(s.median('99'))} | {errors} | {ratio} | "
            f"{_cpu(s, 'server')} | {_per_event(s)} | {_cpu(s, 'redis')} | {_cpu(s, 'target')} | "
            f"{_cpu(s, 'load')} | {_cpu(s, 'others', max)} | "
            f"{', '.join(f'{r.wrk.rps:,.0f}' for r in s.runs)} |"
        )
    lines += [
        "",
        "CPU: cores used during the measured run (median of runs; others: the largest: "
        "processes this benchmark did not start); per event: server CPU time / events "
        "accepted (median of runs). The router's CPU includes delivering to the target while "
        "it accepts; the baselines deliver nothing; `router-target-down` only accepts (its "
        "target refuses connections, its breaker opens): the accept path's own capacity.",
        "",
        "### Nothing accepted is lost",
        "",
        "| server | round | 2xx (wrk warmup + run + probe) | added to the stream | added - 2xx "
        "| delivered during the run | backlog at the end of the run | drained in "
        "| distinct delivered | duplicates | left in stream |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in b.servers:
        for r in s.runs:
            if s.name == "router":
                assert r.delivered_during_run is not None and r.drain_seconds is not None
                backlog = r.stream_len_after_run or 0
                drain_rate = backlog / r.drain_seconds if r.drain_seconds else 0
                tail = (
                    f"{r.delivered_during_run:,} ({r.delivered_during_run / a.duration:,.0f}/s)"
                    f" | {backlog:,} | {r.drain_seconds:.1f} s ({drain_rate:,.0f}/s) | "
                    f"{r.delivered:,} | {r.duplicates} | {r.left_in_stream} |"
                )
            elif s.name == "router-target-down":
                tail = f"0 | - | - | 0 | - | {r.left_in_stream:,} (all runs so far) |"
            else:
                tail = "- | - | - | - | - | - |"
            lines.append(
                f"| {s.name} | {r.round} | {r.wrk_2xx + r.probe_ok:,} | {r.stored:,} | "
                f"{r.slack} | {tail}"
            )
    lines += [
        "",
        f"added - 2xx: requests answered after wrk stopped counting (at most {a.connections} "
        "per wrk run); negative would mean an event answered 200 and lost. Router: "
        "`XINFO STREAM` `entries-added`; distinct delivered = distinct event ids the target "
        "received, once the stream was empty again (delivered entries are XACKed and XDELed). "
        "router-target-down delivers nothing: its stream keeps every entry of every run "
        "(noisy runs done again included).",
    ]
    if b.final_checks:
        fc = b.final_checks
        m = b.router_metrics
        lines.append(
            f"At the end: stream length {fc['stream_len']}, pending {fc['pending']}, dead list "
            f"{fc['dead']}; router metrics: received {m.get('router_webhooks_received_total', 0):,.0f},"
            f" delivered {m.get('router_webhooks_delivered_total', 0):,.0f}, retried "
            f"{m.get('router_webhooks_retried_total', 0):,.0f}, dead "
            f"{m.get('router_webhooks_dead_total', 0):,.0f}; target: "
            f"{fc['target_distinct']:,} distinct events, {fc['target_duplicates']} duplicates."
        )
    lines += [
        "",
        "### Delivery latency to a healthy target (now - event `timestamp`, at the target)",
        "",
        "| load | posted | 2xx | HTTP p50 | HTTP p99 | delivered | delivery p50 | p90 | p99 "
        "| max | router CPU | router CPU per event | target CPU | client CPU | others CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    if b.paced:
        p = b.paced
        c, g, lat, cpu = p["client"], p["target"], p["target"]["latency_ms"], p["cpu"]
        lines.append(
            f"| paced {a.paced_rate:g} events/s x {a.paced_duration:g} s, {a.paced_sessions} "
            f"sessions, <= {a.paced_concurrency} in flight (achieved {c['achieved_rate']:,.0f}/s)"
            f" | {c['sent']:,} | {c['ok']:,} | {fmt_ms(c['http_ms']['p50'])} | "
            f"{fmt_ms(c['http_ms']['p99'])} | {g['unique']:,} | {fmt_ms(lat['p50'])} | "
            f"{fmt_ms(lat['p90'])} | **{fmt_ms(lat['p99'])}** | {fmt_ms(lat['max'])} | "
            f"{fmt_pct(cpu['server'])} | {cpu['server'] / a.paced_rate * 1e6:.0f} us | "
            f"{fmt_pct(cpu['target'])} | {fmt_pct(cpu['load'])} | "
            f"{fmt_pct(cpu['others'])} |"
        )
    if router:
        for r in router.runs:
            c, lat = r.probe or {}, r.probe_latency_ms or {}
            if not c:
                continue
            lines.append(
                f"| probe {a.probe_rate:g} events/s during wrk saturation (round {r.round}) | "
                f"{c['sent']:,} | {c['ok']:,} | {fmt_ms(c['http_ms']['p50'])} | "
                f"{fmt_ms(c['http_ms']['p99'])} | {lat.get('n', 0):,} | {fmt_ms(lat.get('p50'))} | "
                f"{fmt_ms(lat.get('p90'))} | {fmt_ms(lat.get('p99'))} | {fmt_ms(lat.get('max'))} | "
                f"{fmt_pct(r.cpu['server'])} | "
                f"{r.cpu['server'] / r.wrk.rps * 1e6:.0f} us | {fmt_pct(r.cpu['target'])} | "
                f"{fmt_pct(r.cpu['load'])} (wrk + probe) | {fmt_pct(r.cpu['others'])} |"
            )
    lines += [
        "",
        "Delivery latency: the event's `timestamp` (ms, set by the client right before the "
        "POST, as an instance does) to its arrival at the target: accept + store + read + "
        "deliver; 1 ms resolution (the timestamp is whole ms, so values read up to 1 ms high). "
        "Paced client: `" + shlex.join(b.paced["argv"]).replace(sys.executable, "python") + "`."
        if b.paced
        else "",
        "",
        "### Targets (issue 5)",
        "",
    ]
    if router:
        rps = router.median("rps")
        lines.append(
            f"- accepted >= {TARGET_RPS:,} events/s: {rps:,.0f} -> "
            f"{'met' if rps >= TARGET_RPS else 'MISSED'}"
        )
    if b.paced:
        p99 = b.paced["target"]["latency_ms"]["p99"]
        lines.append(
            f"- p99 delivery <= {TARGET_P99_MS:g} ms (paced {a.paced_rate:g}/s): "
            f"{fmt_ms(p99)} -> {'met' if p99 <= TARGET_P99_MS else 'MISSED'}"
        )
    noisy = [f"{s.name} round {r.round} ({r.cpu['others']:.0%})" for s in b.servers
             for r in s.runs if r.cpu["others"] > NOISY]  # fmt: skip
    if b.paced and b.paced["cpu"]["others"] > NOISY:
        noisy.append(f"paced ({b.paced['cpu']['others']:.0%})")
    if noisy:
        lines += [
            "",
            f"**Noisy**: other processes used more than {NOISY:.0%} of a core during "
            f"{', '.join(noisy)} (the quietest of up to {1 + a.noisy_retries} attempts is "
            "kept): those numbers are lower / slower than on a quiet machine.",
        ]
    if b.failures:
        lines += ["", "### FAILURES", ""] + [f"- {f.splitlines()[0]}" for f in b.failures]
    return "\n".join(lines) + "\n"


def _sizes(b: Findings, group: str) -> str:
    with contextlib.suppress(Exception):
        lo, hi = b.target_stats()["groups"][group]["size"]
        return f"{lo}-{hi}"
    return "~400"


def _per_event(s: Server) -> str:
    return f"{statistics.median(r.cpu['server'] / r.wrk.rps * 1e6 for r in s.runs):.0f} us"


def _cpu(s: Server, which: str, agg: Any = statistics.median) -> str:
    return fmt_pct(agg(r.cpu[which] for r in s.runs))
