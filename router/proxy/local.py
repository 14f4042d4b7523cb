"""Endpoints the proxy port answers itself."""

from __future__ import annotations

import json

from router.routing import Router

PATHS = frozenset({"/healthz", "/readyz"})


def readiness(router: Router) -> tuple[bool, dict[str, object]]:
    """Can this router route? It needs its store and at least one healthy instance."""
    healthy = sum(1 for i in router.fleet if i.healthy)
    store_ok = router.store.healthy
    ready = store_ok and healthy > 0
    return ready, {
        "status": "ready" if ready else "not_ready",
        "healthy_instances": healthy,
        "instances": len(router.fleet),
        "store": "ok" if store_ok else "unavailable",
    }


def answer(path: str, router: Router) -> tuple[int, bytes]:
    if path == "/healthz":
        return 200, b'{"status":"ok"}'
    ready, body = readiness(router)
    return (200 if ready else 503), json.dumps(body, separators=(",", ":")).encode()
