"""Streaming throughput: 64 KiB request bodies and 1 MiB responses through each proxy (issue 8).

    /work/venv/bin/python bench/stream_bench.py [--body-size 65536] [--response-size 1048576]
        [--cases upload,download] [--targets direct,nginx,nginx-nobuf,router]
        [--duration 5] [--warmup 1] [--repeats 2] [--connections 32] [--sessions 100]
        [--wait-quiet 15] [--out-dir bench/out] [--keep-tmp]

Small JSON requests measure a proxy's per-request cost; media sends and downloads (a WhatsApp
API moves images and documents) measure how fast it moves bytes. On 127.0.0.1:

1. starts one backend nginx (1 worker) with three servers b1..b3 as in proxy_bench.py: every
   path answers ``{"ok":true,"node":"bN"}`` with ``return 200`` (for a POST, nginx reads and
   discards the body first: ``ngx_http_send_response`` discards it, and the connection stays
   usable: checked below), ``client_max_body_size 2m``, and ``/big.bin`` is a static file of
   ``--response-size`` random bytes (sendfile);
2. in front of them: nginx as in proxy_bench (``hash $http_x_session_id consistent``,
   keepalive; nginx's default buffering: a 64 KiB body is read whole before it goes
   upstream, a 1 MiB response is buffered and may spill to a temp file), ``nginx-nobuf``,
   the same with ``proxy_buffering off; proxy_request_buffering off;`` (streams both ways,
   like the router), and wa-router (generic profile, memory store, metrics on);
3. checks every target first: GET /big.bin returns the file byte for byte; POST of a
   ``--body-size`` body answers 200 and the same keep-alive connection then answers
   GET /ping (the body was consumed exactly);
4. ``upload``: ``wrk -s bench/wrk/upload.lua`` POSTs a JSON body of ``--body-size`` bytes
   (a base64-looking media field) with X-Session-Id one of ``--sessions`` ids; ``download``:
   ``wrk -s bench/wrk/sessions.lua`` GETs /big.bin. ``--repeats`` interleaved rounds (order
   reversed every other round), a warmup before each measured run;
5. reports per case and target: req/s, payload MB/s (req/s x body or response size, 10^6
   bytes), wrk's Transfer/sec (what it read, headers included), p50/p99, errors, proxy CPU,
   ratio to nginx (the baseline config of proxy_bench) and to the faster nginx of the two.

Exits 1 on an error response, a socket error or a failed check.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
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
    instance_url,
    nginx_conf,
    proxy_nginx_conf,
    router_yaml,
    status_server,
)
from bench.lib.harness import Bench, Measured, common_args, measure, run_main
from bench.lib.noisy import noisy_note
from bench.lib.ports import free_ports
from bench.lib.procs import BenchError, Proc
from bench.lib.report import fmt_pct, fmt_us, header_lines
from bench.lib.wrk import LUA_SCRIPT, LUA_SEED, wrk_base

TARGETS = ("direct", "nginx", "nginx-nobuf", "router")
CASES = ("upload", "download")
UPLOAD_PATH = "/v1/upload"
DOWNLOAD_PATH = "/big.bin"
_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", re.M)
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass
class Target:
    name: str
    label: str
    port: int
    proc: Proc
    runs: dict[str, list[Measured]] = field(default_factory=dict)  # case -> runs

    def median(self, case: str, key: str = "rps") -> float | None:
        runs = self.runs.get(case) or []
        if not runs:
            return None
        if key == "rps":
            return statistics.median(m.rps for m in runs)
        if key == "transfer":
            return statistics.median(float(m.extra.get("transfer_bps", 0)) for m in runs)
        return statistics.median(m.p(key) for m in runs)


def backend_conf(bench: Bench, ports: list[int], status_port: int, data: str) -> str:
    servers = "\n".join(
        f"""    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        client_max_body_size 2m;
        sendfile on;
        location / {{ return 200 '{{"ok":true,"node":"{name}"}}'; }}
        location = {DOWNLOAD_PATH} {{
            root {data};
            default_type application/octet-stream;
        }}
    }}"""
        for name, port in zip(BACKENDS, ports, strict=True)
    )
    return nginx_conf(bench.tmp / "backend", status_server(status_port) + servers)


def nobuf_conf(bench: Bench, port: int, backend_ports: list[int]) -> str:
    """proxy_bench's nginx proxy, streaming: no request or response buffering."""
    conf = proxy_nginx_conf(bench.tmp, port, backend_ports)
    conf = conf.replace(str(bench.tmp / "nginx-proxy"), str(bench.tmp / "nginx-nobuf"))
    (bench.tmp / "nginx-nobuf").mkdir(parents=True, exist_ok=True)
    old = 'proxy_set_header Connection "";'
    assert old in conf
    return conf.replace(
        old,
        old + "\n            proxy_buffering off;\n            proxy_request_buffering off;"
        "\n            client_max_body_size 2m;",
    )


def baseline_conf(bench: Bench, port: int, backend_ports: list[int]) -> str:
    conf = proxy_nginx_conf(bench.tmp, port, backend_ports)
    old = 'proxy_set_header Connection "";'
    return conf.replace(old, old + "\n            client_max_body_size 2m;")


def check_target(t: Target, body: bytes, expected: bytes) -> list[str]:
    """The file comes back whole; a POST of ``body`` answers 200 and leaves the keep-alive
    connection usable (the proxy forwarded exactly the body)."""
    problems: list[str] = []
    hdrs = {"X-Session-Id": "sess-1"}
    conn = http.client.HTTPConnection(HOST, t.port, timeout=10)
    try:
        conn.request("GET", DOWNLOAD_PATH, headers=hdrs)
        resp = conn.getresponse()
        got = resp.read()
        if resp.status != 200 or got != expected:
            problems.append(
                f"{t.name}: GET {DOWNLOAD_PATH}: HTTP {resp.status}, {len(got):,} bytes "
                f"({'same' if got == expected else 'NOT the same'} as the file's {len(expected):,})"
            )
        conn.request(
            "POST", UPLOAD_PATH, body=body, headers={**hdrs, "Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200 or b'"node"' not in answer:
            problems.append(f"{t.name}: POST {len(body):,} bytes: HTTP {resp.status} {answer[:200]!r}")
        conn.request("GET", "/ping", headers=hdrs)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200 or b'"node"' not in answer:
            problems.append(
                f"{t.name}: GET /ping after the POST, same connection: HTTP {resp.status} "
                f"{answer[:200]!r}"
            )
    except (OSError, http.client.HTTPException) as e:
        problems.append(f"{t.name}: check: {e!r}")
    finally:
        conn.close()
    return problems


def wrk_argv(args: argparse.Namespace, case: str, port: int, duration: float) -> list[str]:
    base = wrk_base(args.connections, duration)
    if case == "upload":
        url = f"http://{HOST}:{port}{UPLOAD_PATH}"
        return [*base, "-s", str(WRK_DIR / "upload.lua"), url, "--",
                str(args.sessions), str(LUA_SEED), str(args.body_size)]  # fmt: skip
    url = f"http://{HOST}:{port}{DOWNLOAD_PATH}"
    return [*base, "-s", str(LUA_SCRIPT), url, "--", str(args.sessions), str(LUA_SEED)]


def payload(args: argparse.Namespace, case: str) -> int:
    return int(args.body_size if case == "upload" else args.response_size)


def run(bench: Bench) -> tuple[str, dict[str, Any]]:
    args = bench.args
    tmp = bench.tmp
    data = tmp / "data"
    data.mkdir(mode=0o755)
    content = os.urandom(args.response_size)
    (data / DOWNLOAD_PATH.lstrip("/")).write_bytes(content)
    *backend_ports, status_port = free_ports(len(BACKENDS) + 1)
    nginx_port, nobuf_port, router_port, admin_port = free_ports(4)
    backend = bench.start_nginx(
        "backend", backend_conf(bench, backend_ports, status_port, str(data)), backend_ports[0],
        "/ping",
    )  # fmt: skip
    targets: list[Target] = []
    want = args.target_names
    if "direct" in want:
        targets.append(Target("direct", "backend direct (nginx b1)", backend_ports[0], backend))
    if "nginx" in want:
        proc = bench.start_nginx(
            "nginx-proxy", baseline_conf(bench, nginx_port, backend_ports), nginx_port, "/ping"
        )
        targets.append(
            Target("nginx", "nginx 1 worker, hash consistent, keepalive (default buffering)",
                   nginx_port, proc)
        )  # fmt: skip
    if "nginx-nobuf" in want:
        proc = bench.start_nginx(
            "nginx-nobuf", nobuf_conf(bench, nobuf_port, backend_ports), nobuf_port, "/ping"
        )
        targets.append(
            Target("nginx-nobuf", "nginx, the same with proxy_buffering off, "
                   "proxy_request_buffering off", nobuf_port, proc)
        )  # fmt: skip
    if "router" in want:
        conf = router_yaml(
            router_port, admin_port, [(n, instance_url(p)) for n, p in zip(BACKENDS, backend_ports, strict=True)]
        )
        proc = bench.start_router("router", conf, router_port)
        targets.append(
            Target("router", "wa-router (generic profile, memory store)", router_port, proc)
        )
    body = upload_body(args.body_size)
    for t in targets:
        bench.failures += check_target(t, body, content)
    if bench.failures:
        raise BenchError(f"{len(bench.failures)} check(s) failed before the runs")
    for case in args.case_names:
        for rnd in range(1, args.repeats + 1):
            for t in targets if rnd % 2 else list(reversed(targets)):
                what = f"{case} {t.name} round {rnd}"
                if args.warmup > 0:
                    measure(
                        bench, wrk_argv(args, case, t.port, args.warmup), args.warmup, t.proc,
                        backend, what + " (warmup)", retries=False,
                    )  # fmt: skip
                m, out = measure(
                    bench, wrk_argv(args, case, t.port, args.duration), args.duration, t.proc,
                    backend, what,
                )  # fmt: skip
                tr = _TRANSFER.search(out)
                if tr:
                    m.extra["transfer_bps"] = float(tr.group(1)) * _UNITS[tr.group(2)]
                t.runs.setdefault(case, []).append(m)
                print(
                    f"  {what}: {m.rps:,.0f} req/s, {m.rps * payload(args, case) / 1e6:,.0f} MB/s"
                    f"  p50 {fmt_us(m.p('50'))}  p99 {fmt_us(m.p('99'))}  errors "
                    f"{m.wrk.errors}  (CPU: proxy {fmt_pct(m.proxy_cpu)}, backend "
                    f"{fmt_pct(m.backend_cpu)}, others {fmt_pct(m.others_cpu)})",
                    file=sys.stderr,
                    flush=True,
                )
    return render(bench, targets)


def upload_body(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes, like upload.lua's (for the checks)."""
    head = b'{"chatId":"15551234567@c.us","file":{"mimetype":"image/jpeg","data":"'
    tail = b'"}}'
    return head + b"A" * (size - len(head) - len(tail)) + tail


def render(bench: Bench, targets: list[Target]) -> tuple[str, dict[str, Any]]:
    args = bench.args
    lines = header_lines("Streaming: large bodies and responses", bench.started, bench.info)
    lines += [
        f"- upload: `{' '.join(wrk_argv(args, 'upload', 0, args.duration))}`".replace(
            ":0/", ":PORT/"
        )
        + f": POST, a {args.body_size:,}-byte JSON body, small JSON answer",
        f"- download: `{' '.join(wrk_argv(args, 'download', 0, args.duration))}`".replace(
            ":0/", ":PORT/"
        )
        + f": GET of a {args.response_size:,}-byte static file (backend nginx, sendfile)",
        f"- each measured run after a {args.warmup:g} s warmup; {args.repeats} interleaved "
        "round(s), order reversed every other round; medians. MB/s: payload (body or file) "
        "bytes, 10^6 per MB; wrk MB/s: what wrk read (headers included)",
    ]
    result: dict[str, Any] = {"cases": {}}
    for case in args.case_names:
        size = payload(args, case)
        nginx = next((t for t in targets if t.name == "nginx"), None)
        base = nginx.median(case) if nginx is not None else None
        best = max(
            (r for t in targets if t.name.startswith("nginx") if (r := t.median(case))),
            default=None,
        )
        lines += [
            "",
            f"### {case}: {'POST ' + format(size, ',') + '-byte bodies' if case == 'upload' else 'GET ' + format(size, ',') + '-byte responses'}",
            "",
            "| target | req/s | MB/s | wrk MB/s | p50 | p99 | errors | proxy CPU | backend CPU "
            "| ratio to nginx | ratio to faster nginx |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        out: dict[str, Any] = {}
        for t in targets:
            rps = t.median(case)
            if rps is None:
                continue
            runs = t.runs[case]
            ratio = rps / base if base and t.name != "direct" else None
            ratio_best = rps / best if best and t.name != "direct" else None
            proxy_cpu = statistics.median(m.proxy_cpu or 0.0 for m in runs)
            lines.append(
                f"| {t.label} | {rps:,.0f} | {rps * size / 1e6:,.0f} "
                f"| {(t.median(case, 'transfer') or 0) / 1e6:,.0f} "
                f"| {fmt_us(t.median(case, '50') or 0)} | {fmt_us(t.median(case, '99') or 0)} "
                f"| {sum(m.wrk.errors for m in runs)} "
                f"| {fmt_pct(proxy_cpu) if t.name != 'direct' else '-'} "
                f"| {fmt_pct(statistics.median(m.backend_cpu for m in runs))} "
                f"| {'-' if ratio is None else f'{ratio:.2f}'} "
                f"| {'-' if ratio_best is None else f'{ratio_best:.2f}'} |"
            )
            out[t.name] = {
                "label": t.label,
                "median_rps": rps,
                "mb_per_s": rps * size / 1e6,
                "ratio_to_nginx": ratio,
                "ratio_to_best_nginx": ratio_best,
                "runs": [m.as_dict() for m in runs],
            }
        result["cases"][case] = {"payload_bytes": size, "targets": out}
    lines += [
        "",
        "Checked before the runs, for every target: GET of the file returned it byte for byte; "
        "a POST of the body answered 200 and the same keep-alive connection then answered "
        "GET /ping.",
        *noisy_note(m.others_cpu for t in targets for runs in t.runs.values() for m in runs),
    ]
    return "\n".join(lines) + "\n", result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--body-size", type=int, default=64 * 1024, help="upload body bytes (65536)")
    p.add_argument(
        "--response-size", type=int, default=1024 * 1024, help="download bytes (1048576)"
    )
    p.add_argument("--cases", default=",".join(CASES), help="upload,download (both)")
    p.add_argument("--targets", default=",".join(TARGETS), help=",".join(TARGETS) + " (all)")
    p.add_argument("--duration", type=float, default=5, help="seconds per measured run (5)")
    p.add_argument("--warmup", type=float, default=1, help="seconds of warmup before each (1)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; medians (2)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    p.add_argument(
        "--sessions", type=int, default=100, help="X-Session-Id values (100: upload.lua "
        "builds that many full requests)",
    )  # fmt: skip
    common_args(p)
    args = p.parse_args(argv)
    for opt, allowed in (("targets", TARGETS), ("cases", CASES)):
        names = [n.strip() for n in getattr(args, opt).split(",") if n.strip()]
        if not names or set(names) - set(allowed):
            p.error(f"--{opt}: a subset of {','.join(allowed)}")
        setattr(args, opt.rstrip("s") + "_names", [n for n in allowed if n in names])
    if args.body_size < 256 or args.response_size < 1:
        p.error("--body-size >= 256, --response-size >= 1")
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1:
        p.error("--duration and --repeats must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("stream", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())

