"""The simulator's aiohttp application: middlewares, background tasks, serving."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Handler

from router.sim import control, evolution, handlers
from router.sim.events import Hub
from router.sim.manager import SessionExists, SessionManager, UnknownSession
from router.sim.outbound import Outbound
from router.sim.replies import API_KEY_QUERY, BadRequest, error, not_found
from router.sim.state import SIM, SimState, sim
from router.sim.stats import Stats
from router.sim.webhooks import WebhookSender

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/ping", "/health"})
INSTANCE_HEADER = "X-Sim-Instance"


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request under ``"METHOD /route"`` (the literal path for echoed ones)."""
    route = request.match_info.route
    if route.name == "echo" or route.resource is None:
        key = f"{request.method} {request.path}"
    else:
        canonical = route.resource.canonical
        action = request.match_info.get("action")
        if action is not None:  # one key per session action
            canonical = canonical.replace("{action}", action)
        key = f"{request.method} {canonical}"
    sim(request).stats.request(key)
    return await handler(request)


@web.middleware
async def check_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With an api_key, everything but /ping and /health needs ``X-Api-Key`` (or query);
    in the evolution flavour everything but ``/`` needs ``apikey``."""
    st = sim(request)
    expected = st.api_key
    if st.flavor == "evolution":
        if expected is None or request.path in evolution.OPEN_PATHS:
            return await handler(request)
        given = request.headers.get(evolution.AUTH_HEADER, "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return evolution.evo_error(401, "Unauthorized", "Unauthorized")
        return await handler(request)
    if expected is None or request.path in OPEN_PATHS:
        return await handler(request)
    given = request.headers.get("X-Api-Key") or request.query.get(API_KEY_QUERY) or ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return error(401, "Unauthorized", "Unauthorized: missing or wrong X-Api-Key")
    return await handler(request)


@web.middleware
async def map_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Model errors -> WAHA-style JSON answers."""
    try:
        return await handler(request)
    except UnknownSession as exc:
        return not_found(str(exc.args[0]))
    except SessionExists as exc:
        name = str(exc.args[0])
        return error(
            422,
            "Session already exists",
            f"Session '{name}' already exists. Use PUT to update it.",
            session=name,
        )
    except BadRequest as exc:
        return error(400, "Bad Request", str(exc))


async def _tag_instance(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[INSTANCE_HEADER] = request.app[SIM].name


async def _close_websockets(app: web.Application) -> None:
    for ws in list(app[SIM].websockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def _webhook_ctx(app: web.Application) -> AsyncIterator[None]:
    sender = app[SIM].sender
    if sender is None:
        yield
        return
    await sender.start()
    yield
    await sender.close(drain_timeout=1.0)


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = app[SIM].sessions
    manager.boot()
    yield
    await app[SIM].outbound.close()
    await manager.close()


def create_sim_app(
    name: str,
    *,
    webhook_url: str | None = None,
    start_delay: float = 0.0,
    hmac_key: str | None = None,
    api_key: str | None = None,
    state_file: str | None = None,
    send_wait: float = 5.0,
    ack_delay: float = 0.2,
    flavor: str = "waha",
) -> web.Application:
    """A simulated WAHA (or ``flavor="evolution"``: Evolution API v2) instance called
    ``name`` (see the package docstring)."""
    hub = Hub()
    sender = None
    if webhook_url:
        sender = WebhookSender(webhook_url, hmac_key=hmac_key)
        hub.sinks.append(sender.submit)
    state = SimState(
        name=name,
        hub=hub,
        sessions=SessionManager(name, hub, start_delay=start_delay, state_file=state_file),
        stats=Stats(),
        sender=sender,
        api_key=api_key or None,
        send_wait=send_wait,
        outbound=Outbound(ack_delay),
        flavor=flavor,
    )
    app = web.Application(middlewares=[count_requests, check_api_key, map_errors])
    app[SIM] = state
    if flavor == "evolution":
        evolution.add_routes(app)
    else:
        handlers.add_routes(app)
    control.add_routes(app)
    handlers.add_echo(app)
    app.on_response_prepare.append(_tag_instance)
    app.on_shutdown.append(_close_websockets)
    app.cleanup_ctx.append(_webhook_ctx)
    app.cleanup_ctx.append(_sessions_ctx)
    return app


async def serve_sim(
    host: str,
    port: int,
    name: str,
    *,
    webhook_url: str | None = None,
    start_delay: float = 0.0,
    hmac_key: str | None = None,
    api_key: str | None = None,
    state_file: str | None = None,
    send_wait: float = 5.0,
    ack_delay: float = 0.2,
    flavor: str = "waha",
) -> web.AppRunner:
    """Start a simulator on ``host:port`` (0 picks a free port, see ``bound_port``).

    The caller owns the returned runner and must ``await runner.cleanup()``.
    """
    app = create_sim_app(
        name,
        webhook_url=webhook_url,
        start_delay=start_delay,
        hmac_key=hmac_key,
        api_key=api_key,
        state_file=state_file,
        send_wait=send_wait,
        ack_delay=ack_delay,
        flavor=flavor,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("runner is not listening on TCP")
