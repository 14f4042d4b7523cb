"""Micro-benchmark of SessionExtractor.extract: nanoseconds per call for typical requests.

python bench/extract_bench.py [--number N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import timeit
from pathlib import Path

if __name__ == "__main__" and not __package__:  # python bench/x.py: run as python -m bench.x
    os.execv(sys.executable, [sys.executable, "-m", f"bench.{Path(__file__).stem}", *sys.argv[1:]])

from bench.lib.report import command_line, write_report
from router.config.model import Profile, SessionRule, SessionsConfig
from router.sessions import SessionExtractor

SEND_BODY = json.dumps(
    {"session": "tenant-42", "chatId": "15551234567@c.us", "text": "Hello from the router!"}
).encode()
JSON_HDRS = {
    "host": "router:8080",
    "content-type": "application/json",
    "content-length": str(len(SEND_BODY)),
    "x-api-key": "k",
    "user-agent": "GuzzleHttp/7",
}
GET_HDRS = {"host": "router:8080", "x-api-key": "k", "user-agent": "GuzzleHttp/7"}

# (label, profile, user rules, method, path, query, headers, body)
CASES: list[tuple[str, Profile, tuple[SessionRule, ...], str, str, str, dict[str, str], bytes | None]] = [
    ("waha   GET  /api/{s}/chats/{id}/messages", "waha", (),
     "GET", "/api/tenant-42/chats/15551234567%40c.us/messages", "limit=20", GET_HDRS, None),
    ("waha   POST /api/sessions/{s}/start", "waha", (),
     "POST", "/api/sessions/tenant-42/start", "", GET_HDRS, None),
    ("waha   GET  /api/screenshot?session=", "waha", (),
     "GET", "/api/screenshot", "session=tenant-42", GET_HDRS, None),
    ("waha   POST /api/sendText (1st call: NEEDS_BODY)", "waha", (),
     "POST", "/api/sendText", "", JSON_HDRS, None),
    ("waha   POST /api/sendText (2nd call: JSON body)", "waha", (),
     "POST", "/api/sendText", "", JSON_HDRS, SEND_BODY),
    ("evol.  POST /message/sendText/{i}", "evolution", (),
     "POST", "/message/sendText/tenant-42", "", JSON_HDRS, None),
    ("generic X-Session-Id header", "generic", (),
     "GET", "/v1/anything", "", {**GET_HDRS, "x-session-id": "tenant-42"}, None),
    ("user path rule, then waha", "waha",
     (SessionRule(path=re.compile(r"^/v1/accounts/(?P<session>[^/]+)/")),),
     "GET", "/v1/accounts/tenant-42/messages", "", GET_HDRS, None),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=200_000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many repeats")
    parser.add_argument("--out-dir", type=Path, default=None, help="also write extract-<time>.md/.json here")
    args = parser.parse_args()
    head = f"python {sys.version.split()[0]}, best of {args.repeat} x {args.number} calls"
    print(head)
    rows: list[tuple[str, float, str]] = []
    for label, profile, rules, method, path, query, headers, body in CASES:
        ex = SessionExtractor(SessionsConfig(rules=rules), profile)
        result = ex.extract(method, path, query, headers, body)
        env = {"f": ex.extract, "a": (method, path, query, headers, body)}
        # The call statement is compiled by timeit: no lambda layer in the figure.
        timer = timeit.Timer("f(*a)", globals=env)
        ns = min(timer.repeat(repeat=args.repeat, number=args.number)) / args.number * 1e9
        print(f"{ns:8.0f} ns  {label:48} -> {result}")
        rows.append((label.strip(), ns, str(result)))
    if args.out_dir is not None:
        started = dt.datetime.now(dt.UTC)
        lines = [
            f"## SessionExtractor.extract, {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
            "",
            f"- command: `{command_line()}`",
            f"- {head} (timeit)",
            "",
            "| case | ns per call | result |",
            "| --- | ---: | --- |",
            *(f"| {case} | {ns:,.0f} | `{result}` |" for case, ns, result in rows),
        ]
        raw = {
            "number": args.number,
            "repeat": args.repeat,
            "python": sys.version,
            "cases": [{"case": c, "ns": ns, "result": r} for c, ns, r in rows],
        }
        stem = f"extract-{started.strftime('%Y%m%d-%H%M%S')}"
        info = {"python": sys.version}
        write_report(args.out_dir, stem, "\n".join(lines) + "\n", raw, started, args, info)


if __name__ == "__main__":
    main()
