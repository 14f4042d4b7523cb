"""``wa-router instances | sessions | session | drain | undrain | move | rebalance | reload |
events``: a small client for the admin API (stdlib only, synchronous: it runs once and exits).

Where: ``--admin URL``, else the admin address of ``-c FILE``, else ``$WA_ROUTER_ADMIN``, else
``http://127.0.0.1:8081``. Token: ``--token``, else ``$ROUTER_ADMIN_TOKEN``, else the
config's ``admin.token``. Exit 0 on success, 1 when the router refused (its JSON error is
printed), 3 when it could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TextIO

DEFAULT_ADMIN = "http://127.0.0.1:8081"


class Unreachable(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Usage(Exception):
    """The command line is incomplete."""


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    url: str | None = args.admin
    token: str | None = args.token or os.environ.get("ROUTER_ADMIN_TOKEN") or None
    if args.config and (url is None or token is None):
        from router.config import load_config

        cfg = load_config(args.config)
        host = "127.0.0.1" if cfg.admin.host in ("0.0.0.0", "::", "") else cfg.admin.host
        host = f"[{host}]" if ":" in host else host
        url = url or f"http://{host}:{cfg.admin.port}"
        if token is None and cfg.admin.token is not None:
            token = cfg.admin.token.value
    return (url or os.environ.get("WA_ROUTER_ADMIN") or DEFAULT_ADMIN).rstrip("/"), token


def call(base: str, token: str | None, method: str, path: str,
         query: dict[str, str] | None = None, body: Any = None, timeout: float = 30.0) -> Any:
    """One admin request; the decoded JSON answer, ``Refused`` or ``Unreachable``."""
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = {"error": "http_error", "message": raw.decode("utf-8", "replace")[:500]}
        raise Refused(e.code, parsed) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot reach the admin API at {base}: {reason}") from None


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, str] | None, Any]:
    """(method, path, query, body) for the command."""
    q = urllib.parse.quote
    cmd = args.command
    if cmd == "instances":
        return "GET", "/admin/instances", None, None
    if cmd == "sessions":
        return "GET", "/admin/sessions", ({"instance": args.instance} if args.instance else None), None
    if cmd == "session":
        return "GET", f"/admin/sessions/{q(args.name, safe='')}", None, None
    if cmd in ("drain", "undrain"):
        query = {"wait": str(args.wait)} if cmd == "drain" and args.wait else None
        return "POST", f"/admin/instances/{q(args.name, safe='')}/{cmd}", query, None
    if cmd == "move":
        return "POST", f"/admin/sessions/{q(args.session, safe='')}/move", None, {"instance": args.instance}
    if cmd == "rebalance":
        return "POST", "/admin/rebalance", (None if args.execute else {"dry_run": "1"}), None
    if cmd == "reload":
        return "POST", "/admin/reload", None, None
    if cmd == "outbox":
        return _outbox_request(args)
    return "GET", "/admin/events", {"limit": str(args.limit)}, None


def _outbox_request(args: argparse.Namespace) -> tuple[str, str, dict[str, str] | None, Any]:
    q = urllib.parse.quote
    action, target = args.action, args.target
    if action == "campaigns":
        return "GET", "/admin/outbox", None, None
    if target is None:
        raise Usage(f"wa-router outbox {action} needs an id")
    if action == "campaign":
        return "GET", f"/admin/outbox/campaigns/{q(target, safe='')}", None, None
    if action == "session":
        return "GET", f"/admin/outbox/sessions/{q(target, safe='')}", None, None
    if action in ("pause-session", "resume-session"):
        verb = action.split("-")[0]
        return "POST", f"/admin/outbox/sessions/{q(target, safe='')}/{verb}", None, None
    return "POST", f"/admin/outbox/campaigns/{q(target, safe='')}/{action}", None, None


def _show(args: argparse.Namespace, answer: Any, out: TextIO) -> None:
    cmd = args.command
    if args.json:
        print(json.dumps(answer, indent=2), file=out)
    elif cmd == "instances":
        _table(answer, ("name", "state", "sessions", "max_sessions", "weight", "inflight", "url"), out)
    elif cmd == "sessions":
        _table(answer, ("session", "instance", "epoch", "state"), out)
    elif cmd == "rebalance":
        verb = "would move" if answer["dry_run"] else "moving"
        print(f"{verb} {answer['count']} session(s)", file=out)
        if answer["moves"]:
            _table(answer["moves"], ("session", "from", "to"), out)
    elif cmd == "reload":
        print("reloaded: " + (", ".join(answer["changes"]) or "no change"), file=out)
    elif cmd == "outbox" and args.action == "campaigns":
        totals = answer.get("totals", {})
        print("messages: " + ", ".join(f"{k} {v}" for k, v in totals.items() if v), file=out)
        rows = [{**c, **{k: c["counts"].get(k, 0) for k in ("queued", "sent", "failed")}}
                for c in answer.get("campaigns", [])]
        _table(rows, ("id", "name", "state", "total", "queued", "sent", "failed", "eta_seconds"), out)
    elif cmd == "events":
        for ev in answer:
            print(f"{ev.get('ts', '')}  {ev.get('severity', ''):8}  {ev.get('kind', ''):20}  "
                  f"{ev.get('message', '')}", file=out)
    else:
        print(json.dumps(answer), file=out)


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    from router.config import ConfigError

    try:
        base, token = _target(args)
        method, path, query, body = _request(args)
        timeout = 30.0 + (float(args.wait) if getattr(args, "wait", None) else 0.0)
        answer = call(base, token, method, path, query, body, timeout=timeout)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=err)
        return 2
    except Refused as e:
        b = e.body if isinstance(e.body, dict) else {}
        print(f"wa-router: {e.status} {b.get('error', '')}: {b.get('message', '')}", file=err)
        for problem in b.get("problems", []):
            print(f"  {problem}", file=err)
        return 1
    except Unreachable as e:
        print(f"wa-router: {e}", file=err)
        return 3
    except Usage as e:
        print(f"wa-router: {e}", file=err)
        return 2
    _show(args, answer, out)
    if args.command == "drain" and args.wait and not answer.get("drained"):
        print(f"wa-router: {answer.get('sessions')} session(s) still on {args.name}", file=err)
        return 1
    return 0


def add_commands(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", help=f"admin API URL (default: from -c, $WA_ROUTER_ADMIN, {DEFAULT_ADMIN})")
    common.add_argument("--token", help="admin token (default: $ROUTER_ADMIN_TOKEN, or the config's)")
    common.add_argument("-c", "--config", help="read the admin address and token from this config")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=func)
        return p

    add("instances", "list the instances (admin API)")
    add("sessions", "list sessions, all or one instance's").add_argument("instance", nargs="?")
    add("session", "where one session lives").add_argument("name")
    drain = add("drain", "drain an instance: no new sessions, its sessions move away")
    drain.add_argument("name")
    drain.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="wait until it holds no session (exit 1 if it still does)")
    add("undrain", "let a drained instance take sessions again").add_argument("name")
    move = add("move", "move a session to an instance")
    move.add_argument("session")
    move.add_argument("instance")
    add("rebalance", "show (or --execute) the moves that even out the load").add_argument(
        "--execute", action="store_true", help="start the moves (default: dry run)")
    add("reload", "reload the router's config file")
    add("events", "recent events, newest first").add_argument("--limit", type=int, default=50)
    outbox = add("outbox", "queued sends: campaigns | campaign ID | pause ID | resume ID | "
                           "cancel ID | session S | pause-session S | resume-session S")
    outbox.add_argument("action", choices=["campaigns", "campaign", "pause", "resume", "cancel", "session",
                                           "pause-session", "resume-session"])
    outbox.add_argument("target", nargs="?", help="campaign id (or session, for the *session actions)")
