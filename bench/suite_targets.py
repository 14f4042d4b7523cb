"""The suite's targets table: each benchmark's JSON report read into rows of
(what, value, target, met / MISSED), and the outcome of running one step."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib.redis_probe import OTHER
from bench.lib.report import fmt_us
from bench.proxy_results import MIN_ROUNDS_CI


@dataclass
class Step:
    key: str
    title: str
    script: str
    full: list[str]
    quick: list[str] | None  # None: not run with --quick
    timeout: float  # seconds, then the step is stopped and reported failed
    out_dir_arg: bool = True  # the script takes --out-dir



@dataclass
class Outcome:
    step: Step
    argv: list[str]
    out_dir: Path
    log: Path
    code: int | None = None  # None: not run (interrupted before)
    seconds: float = 0.0
    timed_out: bool = False
    reports: list[Path] = field(default_factory=list)  # markdown
    data: list[dict[str, Any]] = field(default_factory=list)  # JSON

    @property
    def ok(self) -> bool:
        return self.code == 0 and bool(self.reports)

    def json_one(self) -> dict[str, Any] | None:
        return self.data[-1] if self.data else None



# --------------------------------------------------------------------------- summary


@dataclass
class Row:
    what: str
    value: str
    target: str
    verdict: str  # met | MISSED | info | n/a
    step: str


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _rps(raw: dict[str, Any], name: str) -> float | None:
    t = raw.get("targets", {}).get(name)
    value = t.get("median_rps") if isinstance(t, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _round_ratio(raw: dict[str, Any], name: str, base: str = "nginx") -> float | None:
    """Median of the per-round ratios name / base: rounds run seconds apart, so each ratio
    sees the machine at one speed (on a VM whose speed drifts, steadier than the ratio of
    the medians)."""
    targets = raw.get("targets", {})
    a = [r.get("rps") for r in (targets.get(name) or {}).get("runs", [])]
    b = [r.get("rps") for r in (targets.get(base) or {}).get("runs", [])]
    ratios = [x / y for x, y in zip(a, b, strict=False) if x and y]
    return statistics.median(ratios) if ratios and len(a) == len(b) else None


def rows_proxy(o: Outcome) -> list[Row]:
    raw = o.json_one()
    names = [
        ("router / nginx, 1 worker, memory store, compiled data path (issues 8, 20)", "router",
         ">= 0.7", 0.7),
        ("router / nginx, 1 worker, Redis store, compiled (issues 8, 20)", "router-redis",
         ">= 0.6", 0.6),
        ("router / nginx, memory store, pure Python (`WA_ROUTER_PURE=1`; issue 20)",
         "router-pure", "-", None),
        ("router `workers: 2` (Redis) / nginx", "router-workers2", "-", None),
        ("HAProxy (1 thread) / nginx", "haproxy", "-", None),
    ]
    if raw is None:
        return [Row(w, "-", t, "n/a", o.step.key) for w, _, t, _ in names]
    rows: list[Row] = []
    nginx = _rps(raw, "nginx")
    for what, name, target, limit in names:
        rps = _rps(raw, name)
        if rps is None or not nginx:
            rows.append(Row(what, "-", target, "n/a", o.step.key))
            continue
        per_round = _round_ratio(raw, name)
        ratio = per_round if per_round is not None else rps / nginx
        verdict = "info" if limit is None else _verdict(ratio >= limit)
        detail = (f"median of per-round ratios; ratio of medians {rps / nginx:.2f}: "
                  if per_round is not None else "")
        rows.append(
            Row(what, f"{ratio:.2f} ({detail}{rps:,.0f} / {nginx:,.0f} req/s)", target, verdict,
                o.step.key)
        )
    pure = _round_ratio(raw, "router", "router-pure")
    if pure is not None:
        rows.append(Row("compiled / pure Python, same config (issue 20)", f"{pure:.2f}", "-",
                        "info", o.step.key))
    redis, memory = _rps(raw, "router-redis"), _rps(raw, "router")
    if redis and memory:
        rows.append(
            Row("Redis store / memory store (issue 3)", f"{redis / memory:.2f}", ">= 0.9",
                _verdict(redis / memory >= 0.9), o.step.key)
        )  # fmt: skip
    runs = raw.get("targets", {}).get("router-redis", {}).get("runs", [])
    if runs:
        other = sum(
            sum((r.get("redis_monitor") or {}).get(OTHER, {}).values()) for r in runs
        )
        requests = sum(r.get("requests", 0) for r in runs)
        rows.append(
            Row("Redis commands caused by cached requests (issue 3)",
                f"{other} over {requests:,} requests", "0", _verdict(other == 0), o.step.key)
        )  # fmt: skip
    failures = raw.get("failures") or []
    rows.append(
        Row("proxy benchmark: errors and failed checks", str(len(failures)), "0",
            _verdict(not failures), o.step.key)
    )  # fmt: skip
    return rows


def _ratio_verdict(ratio: float, ci: object, rounds: int, limit: float) -> tuple[str, str]:
    """The verdict on a median of per-round ratios against ``limit``, and its interval's
    text: "met" only when the 95% interval (from MIN_ROUNDS_CI rounds) stays above it."""
    verdict = _verdict(ratio >= limit)
    low, high = ci if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None)
    if rounds >= MIN_ROUNDS_CI and low is not None and high is not None:
        text = f"; 95% interval {float(low):.3f}-{float(high):.3f}"
        if verdict == "met" and float(low) < limit:
            verdict = f"met (not resolved: the interval reaches below {limit})"
        elif verdict != "met" and float(high) >= limit:
            # The interval holds the limit: this run cannot tell a cost from the machine's
            # noise, either way.
            verdict = f"not resolved (the interval reaches {limit})"
    else:
        text = "; too few rounds for an interval"
    return verdict, text


def rows_metrics(o: Outcome) -> list[Row]:
    """The metrics step: what metrics, idempotency keys (header absent) and the access log
    cost, each a median of per-round ratios with its interval."""
    raw = o.json_one()
    rows = []
    for key, what, target, limit in (
        ("metrics_cost", "metrics cost: router / router-nometrics (issue 6)",
         ">= 0.95 (cost <= 5%)", 0.95),
        ("keys_cost", "idempotency keys enabled, header absent: router / router-nokeys "
         "(issue 17)", ">= 0.98 (cost <= 2%)", 0.98),
        ("access_cost", "access log on (JSON to a file): router-accesslog / router "
         "(issue 17)", ">= 0.95 (cost <= 5%)", 0.95),
    ):  # fmt: skip
        cost = raw.get(key) if raw else None
        if not isinstance(cost, dict):
            rows.append(Row(what, "-", target, "n/a", o.step.key))
            continue
        ratio = float(cost["median_ratio"])
        rounds = len(cost.get("per_round_ratio") or [])
        verdict, ci = _ratio_verdict(ratio, cost.get("median_ratio_ci95"), rounds, limit)
        rows.append(
            Row(what, f"{ratio:.3f} (cost {1 - ratio:.1%}; median of {rounds} rounds{ci})",
                target, verdict, o.step.key)
        )  # fmt: skip
    return rows


def rows_latency(o: Outcome) -> list[Row]:
    raw = o.json_one()
    what = "p99 at 2,000 req/s: router - nginx (issue 8)"
    if raw is None or "p99_diff_us" not in raw:
        return [Row(what, "-", "<= 1 ms", "n/a", o.step.key)]
    targets = raw.get("targets", {})
    p99 = {k: v.get("median_latency_us", {}).get("99") for k, v in targets.items()}
    achieved = ", ".join(
        f"{k} {v['median_rps']:,.0f}" for k, v in targets.items() if v.get("median_rps")
    )
    diff = float(raw["p99_diff_us"])
    return [
        Row(
            what.replace("2,000", f"{raw.get('rate', 2000):,.0f}"),
            f"{diff / 1e3:+.2f} ms (router {fmt_us(p99.get('router') or 0)}, nginx "
            f"{fmt_us(p99.get('nginx') or 0)}; achieved req/s: {achieved})",
            "<= 1 ms",
            _verdict(diff <= 1000),
            o.step.key,
        )
    ]


def rows_growth(o: Outcome) -> list[Row]:
    raw = o.json_one()
    what = "throughput flat as sessions grow (issue 8)"
    if raw is None or raw.get("sessions_flat_pooled") is None:
        return [Row(what, "-", ">= 0.9", "n/a", o.step.key)]
    cells = raw.get("cells", [])
    lo_s, hi_s = min(c["sessions"] for c in cells), max(c["sessions"] for c in cells)
    per_inst = {int(k): v for k, v in (raw.get("sessions_flat") or {}).items()}
    shown = ", ".join(
        f"{k}: {v:.2f}" if v is not None else f"{k}: -" for k, v in sorted(per_inst.items())
    )
    rows = [
        Row(
            f"throughput flat from {lo_s:,} to {hi_s:,} sessions, same instances (issue 8)",
            f"{raw['sessions_flat_pooled']:.2f} (median of the per-round ratios at every "
            f"instance count; per instance count {shown})",
            ">= 0.9",
            _verdict(bool(raw.get("sessions_ok"))),
            o.step.key,
        )
    ]
    # More instances means more backend sockets: on one 2-core machine the backends and the
    # kernel slow down too, so the instance axis is read relative to nginx over the same.
    inst = raw.get("instances_flat_vs_nginx")
    if inst is not None:
        insts = sorted({c["instances"] for c in cells})
        rows.append(
            Row(f"throughput flat from {insts[0]} to {insts[-1]} instances ({lo_s:,} sessions), "
                "relative to nginx over the same instances (issue 8)", f"{inst:.2f}", ">= 0.9",
                _verdict(bool(raw.get("instances_ok"))), o.step.key)
        )  # fmt: skip
    if raw.get("flat_ratio_vs_nginx") is not None:
        first, last = raw["first_cell"], raw["last_cell"]
        rows.append(
            Row(f"both axes: {last[0]:,} sessions / {last[1]} instances vs {first[0]:,} / "
                f"{first[1]}, relative to nginx", f"{raw['flat_ratio_vs_nginx']:.2f} (absolute "
                f"{raw['flat_ratio']:.2f}; lowest cell {raw.get('worst_ratio') or 0:.2f})",
                "-", "info", o.step.key)
        )  # fmt: skip
    by_inst: dict[int, list[dict[str, Any]]] = {}
    for c in cells:
        by_inst.setdefault(c["instances"], []).append(c)
    per_session = []
    for inst, cs in sorted(by_inst.items()):
        cs = [c for c in cs if c.get("rss_kib")]
        if len(cs) >= 2 and cs[-1]["sessions"] > cs[0]["sessions"]:
            b = (cs[-1]["rss_kib"] - cs[0]["rss_kib"]) * 1024 / (cs[-1]["sessions"] - cs[0]["sessions"])
            per_session.append(f"{b:,.0f} B ({inst} instances)")
    if per_session:
        top = max(cells, key=lambda c: (c["sessions"], c["instances"]))
        rows.append(
            Row("router RSS per session", "; ".join(per_session)
                + f"; {top['rss_kib'] / 1024:.0f} MiB at {top['sessions']:,} sessions / "
                f"{top['instances']} instances", "-", "info", o.step.key)
        )  # fmt: skip
    return rows


def rows_stream(o: Outcome) -> list[Row]:
    raw = o.json_one()
    if raw is None:
        return [Row("streaming (64 KiB bodies, 1 MiB responses)", "-", "-", "n/a", o.step.key)]
    rows = []
    for case, data in raw.get("cases", {}).items():
        t = data.get("targets", {})
        r = t.get("router")
        if not r:
            continue
        nginx = {k: v for k, v in t.items() if k.startswith("nginx")}
        ref = ", ".join(f"{k} {v['mb_per_s']:,.0f} MB/s" for k, v in nginx.items())
        best = r.get("ratio_to_best_nginx")
        rows.append(
            Row(
                f"streaming {case} ({data['payload_bytes']:,} bytes): router MB/s",
                f"{r['mb_per_s']:,.0f} MB/s ({ref}); router / faster nginx "
                + ("-" if best is None else f"{best:.2f}"),
                "-",
                "info",
                o.step.key,
            )
        )
    return rows


def rows_store(o: Outcome) -> list[Row]:
    raw = o.json_one()
    if raw is None:
        return [Row("Redis store at scale (issue 3)", "-", "-", "n/a", o.step.key)]
    s = raw.get("store_process", {})
    ok = raw.get("ok", {})
    router = raw.get("router", {})
    full = router.get("full", {})
    empty = router.get("empty", {})
    n = s.get("sessions_loaded", 0)
    rows = [
        Row(f"store: bulk load of {n:,} sessions", f"{s.get('load_s', 0):.2f} s", "<= 3 s",
            _verdict(bool(ok.get("load"))), o.step.key),
        Row("store: cached lookup", f"{s.get('lookup_hit_ns', 0):.0f} ns", "<= 2 us",
            _verdict(bool(ok.get("lookup"))), o.step.key),
        Row("store: Redis commands caused by cached lookups",
            str(sum((s.get("redis_commands_during_lookups") or {}).values())), "0",
            _verdict(bool(ok.get("commands"))), o.step.key),
    ]  # fmt: skip
    if full:
        rows.append(
            Row(f"store: full router RSS with {full.get('sessions', 0):,} sessions",
                f"{full.get('rss_mib', 0):.1f} MiB (start {full.get('healthz_s', 0):.2f} s; "
                f"{empty.get('healthz_s', 0):.2f} s empty)", "<= 150 MB",
                _verdict(bool(ok.get("router_rss"))), o.step.key)
        )  # fmt: skip
    return rows


def rows_failover(o: Outcome) -> list[Row]:
    raw = o.json_one()
    what = f"failover ({o.step.full[1]} sessions): errors after kill -9 (issue 4)"
    if raw is None:
        return [Row(what, "-", "0", "n/a", o.step.key)]
    errors = raw.get("errors")
    return [
        Row(
            what,
            f"{errors} (detection {raw.get('detection_s')} s, all moved sessions WORKING "
            f"after {raw.get('all_moved_working_s')} s, {raw.get('moved')} moved)",
            "0",
            _verdict(errors == 0 and raw.get("all_moved_working_s") is not None),
            o.step.key,
        )
    ]


def rows_webhook(o: Outcome) -> list[Row]:
    raw = o.json_one()
    if raw is None:
        return [Row("webhook: events/s accepted while delivering (issue 5)", "-", ">= 10,000",
                    "n/a", o.step.key)]  # fmt: skip
    rows = []
    servers = raw.get("servers", {})
    router = servers.get("router", {}).get("median_rps")
    base = servers.get("baseline", {}).get("median_rps")
    if router is not None:
        rows.append(
            Row("webhook: events/s accepted while delivering (issue 5)",
                f"{router:,.0f}" + (f" ({router / base:.2f} x the naive baseline)" if base else ""),
                ">= 10,000", _verdict(router >= 10_000), o.step.key)
        )  # fmt: skip
    paced = raw.get("paced") or {}
    p99 = (paced.get("target") or {}).get("latency_ms", {}).get("p99")
    if p99 is not None:
        rows.append(
            Row("webhook: p99 delivery latency, paced (issue 5)", f"{p99:.1f} ms", "<= 50 ms",
                _verdict(p99 <= 50), o.step.key)
        )  # fmt: skip
    return rows


def rows_outbox(o: Outcome) -> list[Row]:
    raw = o.json_one()
    if raw is None:
        return [Row("outbox: enqueue messages/s with Redis (issue 16)", "-", ">= 5,000", "n/a", o.step.key)]
    rows = []
    rounds = raw.get("enqueue", [])
    if rounds:
        rps = statistics.median(r["router"]["rps"] for r in rounds)
        p99 = statistics.median(r["router"]["p99_ms"] for r in rounds)
        ratio = statistics.median(r["ratio"] for r in rounds)
        rows.append(Row("outbox: enqueue messages/s with Redis, AOF everysec (issue 16)",
                        f"{rps:,.0f} (p99 {p99:.1f} ms)", ">= 5,000, p99 <= 20 ms",
                        _verdict(rps >= 5000 and p99 <= 20), o.step.key))
        rows.append(Row("outbox: enqueue / naive aiohttp + XADD baseline (issue 16)", f"{ratio:.2f}",
                        ">= 0.8", _verdict(ratio >= 0.8), o.step.key))
    if "campaigns" in raw:
        mps = raw["campaigns"]["messages_per_s"]
        two = raw.get("campaigns_2", {}).get("messages_per_s")
        best = max(mps, two or 0)
        value = f"{mps:,.0f} one call at a time" + (f"; {two:,.0f} from two clients at once" if two else "")
        rows.append(Row("outbox: campaign batches of 10,000, messages/s stored (issue 16)", value,
                        ">= 50,000", _verdict(best >= 50_000), o.step.key))
    if "dispatch_ratio" in raw:
        rows.append(Row("outbox: dispatch, pacing off / posting straight to the sims (issue 16)",
                        f"{raw['dispatch_ratio']:.2f} ({raw['dispatch']['messages_per_s']:,.0f} msg/s)",
                        ">= 0.5", _verdict(raw["dispatch_ratio"] >= 0.5), o.step.key))
    m = raw.get("million")
    if m:
        n = f"{m['messages']:,}"
        rows.append(Row(f"outbox: Redis memory per queued message beyond its body, {n} queued (issue 16)",
                        f"{m['redis_bytes_per_message_beyond_body']:.0f} B", "<= 300 B",
                        _verdict(m["redis_bytes_per_message_beyond_body"] <= 300), o.step.key))
        rows.append(Row(f"outbox: router RSS growth with {n} queued (issue 16)",
                        f"{m['router_rss_growth_mib']} MiB", "<= 50 MB",
                        _verdict(m["router_rss_growth_mib"] * 1.048576 <= 50), o.step.key))
        worst = min(m["enqueue_vs_shallow"], m["dispatch_vs_shallow"])
        rows.append(Row(f"outbox: enqueue and dispatch rates with {n} queued / the shallow figures (issue 16)",
                        f"enqueue {m['enqueue_vs_shallow']:.2f}x, dispatch {m['dispatch_vs_shallow']:.2f}x",
                        ">= 0.8x", _verdict(worst >= 0.8), o.step.key))
    return rows


def rows_idempotency(o: Outcome) -> list[Row]:
    raw = o.json_one()
    what = "Idempotency-Key on every POST (Redis): sendText keyed / without keys (issue 17)"
    kr = raw.get("keyed_ratio") if raw else None
    if raw is None or not isinstance(kr, dict) or kr.get("median") is None:
        return [Row(what, "-", ">= 0.7", "n/a", o.step.key)]
    ratio = float(kr["median"])
    rounds = len(kr.get("per_round") or [])
    verdict, ci = _ratio_verdict(ratio, kr.get("ci95"), rounds, 0.7)
    modes = raw.get("modes", {})
    plain, keyed = modes.get("plain", {}), modes.get("keyed", {})
    cpu = ""
    if plain.get("median_cpu_us") and keyed.get("median_cpu_us"):
        cpu = (f"; router CPU per response {plain['median_cpu_us']:.1f} / "
               f"{keyed['median_cpu_us']:.1f} us")
    rows = [
        Row(what, f"{ratio:.3f} (median of {rounds} rounds{ci}; {keyed.get('median_rps') or 0:,.0f}"
            f" / {plain.get('median_rps') or 0:,.0f} req/s{cpu})", ">= 0.7", verdict, o.step.key),
    ]  # fmt: skip
    replays = raw.get("replays")
    rows.append(
        Row("idempotency: every keyed request claimed a key of its own, none replayed",
            f"{raw.get('keyed_keys_added', 0):,} keys for {raw.get('keyed_requests', 0):,} "
            f"responses; replays {replays}", "replays 0",
            _verdict(replays == 0 and raw.get("keyed_keys_added", 0) >= raw.get("keyed_requests", 1)),
            o.step.key)
    )  # fmt: skip
    nr = raw.get("nokeys_ratio")
    if isinstance(nr, dict) and nr.get("median") is not None:
        rows.append(
            Row("idempotency: sendText without the header, keys on / off (POST path)",
                f"{float(nr['median']):.3f} (median of {len(nr.get('per_round') or [])} rounds)",
                "-", "info", o.step.key)
        )  # fmt: skip
    failures = raw.get("failures") or []
    rows.append(
        Row("idempotency benchmark: errors and failed checks", str(len(failures)), "0",
            _verdict(not failures), o.step.key)
    )  # fmt: skip
    return rows


def rows_extract(o: Outcome) -> list[Row]:
    raw = o.json_one()
    if raw is None:
        return [Row("SessionExtractor.extract", "-", "-", "n/a", o.step.key)]
    cases = {" ".join(c["case"].split()): c["ns"] for c in raw.get("cases", [])}
    worst = max(cases.items(), key=lambda kv: kv[1]) if cases else ("-", 0.0)
    generic = next((v for k, v in cases.items() if k.startswith("generic")), None)
    return [
        Row("SessionExtractor.extract per call",
            (f"{generic:,.0f} ns (generic header); " if generic is not None else "")
            + f"slowest {worst[1]:,.0f} ns ({worst[0]})", "-", "info", o.step.key)
    ]  # fmt: skip


def rows_cpu(o: Outcome) -> list[Row]:
    raw = o.json_one()
    builds = {b["build"]: b for b in (raw or {}).get("builds", [])}
    if not builds:
        return [Row("router CPU per request (perf, saturation)", "-", "-", "n/a", o.step.key)]
    text = "; ".join(f"{name} {b['us_per_request']:.1f} us" for name, b in builds.items())
    return [Row("router CPU per request under perf at saturation (issue 20; buckets in its "
                "section)", text, "-", "info", o.step.key)]


SUMMARIES: dict[str, Callable[[Outcome], list[Row]]] = {
    "proxy": rows_proxy,
    "cpu": rows_cpu,
    "metrics": rows_metrics,
    "latency": rows_latency,
    "growth": rows_growth,
    "stream": rows_stream,
    "store": rows_store,
    "failover": rows_failover,
    "failover-500": rows_failover,
    "webhook": rows_webhook,
    "outbox": rows_outbox,
    "idempotency": rows_idempotency,
    "extract": rows_extract,
}


def max_others(data: object, key: str = "") -> float | None:
    """The most CPU other processes took during any kept measured run of a JSON report
    (``others_cpu``, or ``others`` inside a ``cpu`` dict); warmups and runs discarded as
    noisy (and done again) are left out."""
    found: list[float] = []

    def walk(node: object, parent: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if "discarded" in k or "warmup" in k:
                    continue
                if isinstance(v, int | float) and (
                    k == "others_cpu" or (k == "others" and parent == "cpu")
                ):
                    found.append(float(v))
                else:
                    walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, parent)

    walk(data, key)
    return max(found) if found else None


