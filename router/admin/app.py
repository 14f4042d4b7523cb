"""Admin HTTP API (aiohttp: not on the data path, so a full framework is the right tool)."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from router.metrics import make_registry
from router.proxy.local import readiness
from router.routing import Router

ROUTER = web.AppKey[Callable[[], Router]]("router")
REGISTRY = web.AppKey("registry", CollectorRegistry)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, body = readiness(request.app[ROUTER]())
    return _json(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_admin_app(current_router: Callable[[], Router]) -> web.Application:
    """``current_router`` returns the live router (it changes on config reload)."""
    app = web.Application()
    app[ROUTER] = current_router
    app[REGISTRY] = make_registry(current_router)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
