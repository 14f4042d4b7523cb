"""Admin HTTP API (aiohttp: not on the data path, so a full framework is the right tool)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from router import build
from router.admin import openapi
from router.admin.rates import Sampler
from router.components import Components
from router.drain import Drainer
from router.errors import (
    BadRequest,
    Conflict,
    NotFound,
    RouterError,
    Unauthorized,
    UpstreamError,
)
from router.metrics import make_registry
from router.moves import Move
from router.placement import capacity
from router.proxy.local import readiness
from router.proxy.responses import error_body
from router.routing import Router
from router.store.base import Assignment
from router.webhooks import WebhookRelay

PARTS = web.AppKey("parts", Components)
REGISTRY = web.AppKey("registry", CollectorRegistry)

SAMPLER = web.AppKey("sampler", Sampler)
STARTED = web.AppKey("started", float)

# /dashboard is a static page with no data in it: a browser cannot send a bearer token for
# a page load, so the page asks for the token and sends it on every API call it makes.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/dashboard", "/admin/openapi.json"})
DASHBOARD = (Path(__file__).parent / "dashboard.html").read_bytes()
READ_METHODS = frozenset({"GET", "HEAD"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place admin errors become JSON answers."""
    try:
        return await handler(request)
    except RouterError as e:
        rid = request.headers.get("X-Request-Id", "")[:200]
        resp = web.Response(
            body=error_body(e, rid), status=e.status, content_type="application/json"
        )
        if e.retry_after is not None:
            resp.headers["Retry-After"] = str(e.retry_after)
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(e.status, "bad_request")
        resp = _json({"error": code, "message": e.reason, "request_id": ""}, e.status)
        if "Allow" in e.headers:  # RFC 9110: a 405 lists what is allowed
            resp.headers["Allow"] = e.headers["Allow"]
        return resp


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token for everything but health and metrics; without a configured token,
    read-only endpoints for loopback clients only."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    token = request.app[PARTS].router.config.admin.token
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.value.encode()
        ):
            raise Unauthorized("missing or wrong admin token (Authorization: Bearer ...)")
    elif request.method not in READ_METHODS or not _is_loopback(request.remote):
        raise Unauthorized("no admin.token configured: read-only, loopback only")
    return await handler(request)


def _assignment(a: Assignment, router: Router) -> dict[str, object]:
    return {"session": a.session, "instance": a.instance, "epoch": a.epoch,
            "state": router.session_state(a.session)}


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, body = readiness(request.app[PARTS].router)
    return _json(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    if not request.app[PARTS].router.config.metrics.enabled:
        raise NotFound("metrics are disabled (metrics.enabled: false)")
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_instances(request: web.Request) -> web.Response:
    router = request.app[PARTS].router
    counts = router.store.counts()
    return _json([
        {"name": i.name, "url": i.address.origin + i.address.base_path, "state": i.state,
         "sessions": counts.get(i.name, 0), "weight": i.config.weight,
         "max_sessions": i.config.max_sessions, "inflight": i.inflight}
        for i in router.fleet
    ])


def _int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(request.query.get(key, str(default)))
    except ValueError as e:
        raise BadRequest(f"{key} must be an integer") from e
    if not lo <= value <= hi:
        raise BadRequest(f"{key} must be between {lo} and {hi}")
    return value


async def list_sessions(request: web.Request) -> web.Response:
    """All assignments (or one instance's), sorted by session. Optional ``q`` (substring
    of the session name), ``offset`` and ``limit`` page through large maps; the total
    before paging is in ``X-Total-Count``."""
    router = request.app[PARTS].router
    instance = request.query.get("instance")
    if instance is not None and router.fleet.get(instance) is None:
        raise NotFound(f"unknown instance {instance!r}")
    items = await router.store.list(instance)
    q = request.query.get("q", "").strip()
    if q:
        items = [a for a in items if q in a.session]
    items.sort(key=lambda a: a.session)
    total = len(items)
    offset = _int(request, "offset", 0, 0, 10**9)
    limit = _int(request, "limit", total or 1, 1, 10**9)
    resp = _json([_assignment(a, router) for a in items[offset:offset + limit]])
    resp.headers["X-Total-Count"] = str(total)
    return resp


async def openapi_document(request: web.Request) -> web.Response:
    return _json(openapi.spec())


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=DASHBOARD, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})


async def overview(request: web.Request) -> web.Response:
    """Everything the dashboard shows at a glance, in one answer."""
    router = request.app[PARTS].router
    sampler = request.app[SAMPLER]
    counts = router.store.counts()
    fleet = list(router.fleet)
    available = [i for i in fleet if i.available]
    total_load = sum(counts.get(i.name, 0) for i in available)
    total_weight = sum(i.config.weight for i in available)
    bf = router.config.placement.balance_factor
    instances = []
    for i in fleet:
        r = sampler.rates(i.name)
        member = router.fleet.ring.members.get(i.name)
        cap = (capacity(member, max(total_load, 1), total_weight, bf)
               if member is not None and i.available and total_weight > 0 else i.config.max_sessions)
        instances.append({
            "name": i.name, "url": i.address.origin + i.address.base_path, "state": i.state,
            "up": i.healthy, "sessions": counts.get(i.name, 0), "capacity": cap,
            "max_sessions": i.config.max_sessions, "weight": i.config.weight,
            "inflight": i.inflight, "rps": round(r.rps, 2), "error_rate": round(r.error_rate, 4),
            "p99_ms": None if r.p99 is None else round(r.p99 * 1000, 2),
        })  # fmt: skip
    own = sampler.rates("router")
    parts = request.app[PARTS]
    relay, failover, leadership, reloads = parts.relay, parts.failover, parts.leadership, parts.reloads
    body: dict[str, object] = {
        "router": {
            "uptime": round(time.monotonic() - request.app[STARTED], 1),
            "build": build.mode(),  # the data path: compiled (mypyc) or pure Python
            "leader": leadership.is_leader,
            "store_up": router.store.healthy, "sessions": len(router.store),
            "held_requests": router.held, "own_rps": round(own.rps, 2),
            "failovers": sum(failover.failovers_total.values()),
            "reloads": {"success": reloads.success, "error": reloads.error,
                        "last": reloads.last_result},
        },
        "instances": instances,
        "webhooks": {
            "backlog": relay.backlog(), "received": relay.received, "delivered": relay.delivered,
            "retried": relay.retried, "dead": relay.dead_count,
            "targets": [{k: t[k] for k in ("url", "breaker", "backlog", "inflight")} for t in relay.status()],
        },
    }  # fmt: skip
    return _json(body)


async def get_session(request: web.Request) -> web.Response:
    router = request.app[PARTS].router
    a = await router.store.get(request.match_info["session"])
    if a is None:
        raise NotFound("session not assigned")
    return _json(_assignment(a, router))


async def move_session(request: web.Request) -> web.Response:
    """Move a session: held, stopped on its instance, reassigned, restored on the target;
    answers once it is ready there (or why it is not)."""
    parts = request.app[PARTS]
    router = parts.router
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("body must be JSON: {\"instance\": NAME}") from e
    if not isinstance(body, dict) or not isinstance(body.get("instance"), str):
        raise BadRequest("body must be JSON: {\"instance\": NAME}")
    session, target_name = request.match_info["session"], body["instance"]
    current = await router.store.get(session)
    if current is None:
        raise NotFound(f"session {session!r} is not assigned")
    target = router.fleet.get(target_name)
    if target is None:
        raise BadRequest(f"unknown instance {target_name!r}")
    if not target.available:
        raise Conflict(f"instance {target_name!r} is not taking sessions (unhealthy or draining)")
    if current.instance != target_name and parts.mover.pinned(current.instance):
        raise Conflict(f"failover.stop is none: session {session!r} moves only once "
                       f"{current.instance} is down (drain it, then stop it)")
    if current.instance != target_name:
        ok = await parts.mover.move(Move(session, "manual", source=current.instance,
                                         target=target_name, stop_old=True, manual=True))
        if not ok:
            raise UpstreamError(f"session {session!r} could not be restored on {target_name}")
    moved = router.store.cached(session) or current
    return _json(_assignment(moved, router))


def _drainer(request: web.Request) -> Drainer:
    return request.app[PARTS].drainer


def _seconds(request: web.Request, key: str, default: float, cap: float) -> float:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise BadRequest(f"{key} must be a number of seconds") from e
    if not 0 <= value <= cap:
        raise BadRequest(f"{key} must be between 0 and {cap:g} seconds")
    return value


def _instance_view(router: Router, name: str) -> dict[str, object]:
    inst = router.fleet.get(name)
    sessions = router.store.counts().get(name, 0)
    return {"instance": name, "state": inst.state if inst is not None else "removed",
            "sessions": sessions, "drained": sessions == 0}


async def drain_instance(request: web.Request) -> web.Response:
    """Drain: no new sessions, its sessions move away (throttled). ``?wait=SECONDS``
    answers once it holds none (or the wait is over: ``"drained": false``)."""
    drainer = _drainer(request)
    name = request.match_info["name"]
    await drainer.drain(name)
    wait = _seconds(request, "wait", 0.0, 3600.0)
    if wait:
        await drainer.wait_empty(name, wait)
    return _json(_instance_view(request.app[PARTS].router, name))


async def undrain_instance(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _drainer(request).undrain(name)
    return _json(_instance_view(request.app[PARTS].router, name))


_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})


def _flag(request: web.Request, key: str) -> bool:
    value = request.query.get(key, "").lower()
    if value not in _TRUE | _FALSE:
        raise BadRequest(f"{key} must be 1 or 0 (true/false)")
    return value in _TRUE


async def rebalance(request: web.Request) -> web.Response:
    """``dry_run=1``: the moves that would bring every instance within the balance bound
    (fewest moves); otherwise the same moves, started in the background (throttled)."""
    drainer = _drainer(request)
    dry_run = _flag(request, "dry_run")
    moves = await (drainer.plan() if dry_run else drainer.rebalance())
    return _json({
        "dry_run": dry_run,
        "moves": [{"session": s, "from": a, "to": b} for s, a, b in moves],
        "count": len(moves),
    })


async def reload_config(request: web.Request) -> web.Response:
    """Re-read the config file: 200 with the changes, or 400 with every problem (the
    running config stays)."""
    changes = await request.app[PARTS].reload()  # ConfigError: 400 with every problem (errors_middleware)
    return _json({"result": "success", "changes": changes})


async def list_events(request: web.Request) -> web.Response:
    limit = _int(request, "limit", 100, 1, 1000)
    events = request.app[PARTS].events.recent(limit, request.query.get("kind"))
    return _json([e.as_dict() for e in events])


def _relay(request: web.Request) -> WebhookRelay:
    return request.app[PARTS].relay


async def dead_webhooks(request: web.Request) -> web.Response:
    limit = _int(request, "limit", 100, 1, 10000)
    return _json(await _relay(request).dead(limit))


async def replay_webhooks(request: web.Request) -> web.Response:
    ids: list[str] | None = None
    if request.can_read_body:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest('body must be empty or JSON: {"ids": [...]}') from e
        if not isinstance(body, dict):
            raise BadRequest('body must be empty or JSON: {"ids": [...]}')
        if "ids" in body:
            raw = body["ids"]
            if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
                raise BadRequest('"ids" must be a list of dead-entry ids')
            ids = raw
    return _json({"replayed": await _relay(request).replay(ids)})


async def outbox_overview(request: web.Request) -> web.Response:
    """Totals by state, the deepest session queues, campaigns."""
    return _json(await request.app[PARTS].outbox.overview())


async def outbox_session_view(request: web.Request) -> web.Response:
    """One session's queue: depth by priority, paused or not, recent sends."""
    return _json(await request.app[PARTS].outbox.session(request.match_info["session"]))


async def outbox_campaign(request: web.Request) -> web.Response:
    return _json(await request.app[PARTS].outbox.campaign(request.match_info["campaign"]))


async def outbox_campaign_action(request: web.Request) -> web.Response:
    """Pause, resume or cancel a campaign (also on the proxy port, for the app)."""
    outbox = request.app[PARTS].outbox
    action = request.path.rsplit("/", 1)[1]
    return _json(await outbox.set_campaign_state(request.match_info["campaign"], action))


async def pause_outbox_session(request: web.Request) -> web.Response:
    """Hold one session's queue (an operator's decision, e.g. after a ban signal)."""
    return _json(await request.app[PARTS].outbox.pause_session(request.match_info["session"], True))


async def resume_outbox_session(request: web.Request) -> web.Response:
    return _json(await request.app[PARTS].outbox.pause_session(request.match_info["session"], False))


def create_admin_app(parts: Components) -> web.Application:
    """The admin port's application over a router process's built components."""
    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=1024 * 1024)
    app[PARTS] = parts
    app[REGISTRY] = make_registry(parts)
    app[STARTED] = time.monotonic()
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/dashboard", dashboard)
    r.add_get("/admin/openapi.json", openapi_document)
    r.add_get("/admin/overview", overview)
    r.add_get("/admin/instances", list_instances)
    r.add_get("/admin/sessions", list_sessions)
    r.add_get("/admin/sessions/{session}", get_session)
    r.add_post("/admin/sessions/{session}/move", move_session)
    r.add_post("/admin/instances/{name}/drain", drain_instance)
    r.add_post("/admin/instances/{name}/undrain", undrain_instance)
    r.add_post("/admin/rebalance", rebalance)
    r.add_post("/admin/reload", reload_config)
    r.add_get("/admin/events", list_events)
    r.add_get("/admin/webhooks/dead", dead_webhooks)
    r.add_post("/admin/webhooks/dead/replay", replay_webhooks)
    r.add_get("/admin/outbox", outbox_overview)
    r.add_get("/admin/outbox/sessions/{session}", outbox_session_view)
    r.add_get("/admin/outbox/campaigns/{campaign}", outbox_campaign)
    for action in ("pause", "resume", "cancel"):
        r.add_post(f"/admin/outbox/campaigns/{{campaign}}/{action}", outbox_campaign_action)
    r.add_post("/admin/outbox/sessions/{session}/pause", pause_outbox_session)
    r.add_post("/admin/outbox/sessions/{session}/resume", resume_outbox_session)
    app[SAMPLER] = Sampler(parts.router.stats_sources, time.monotonic)
    app.cleanup_ctx.append(_sampling)
    return app


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(app[SAMPLER].run(), name="dashboard-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
