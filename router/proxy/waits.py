"""The exchange's waits: everything on the data path that needs a task.

Holding a request until its session is routable, opening an upstream connection, backing
off before a resend, and fan-out. Each runs as one task per exchange (``spawn``), under a
guard that turns an error into the router's answer; the exchange's phase says which wait
it is in. The common case never comes here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from router.errors import RouterError, UpstreamError
from router.instances import Instance
from router.proxy.phase import FINAL, Phase
from router.proxy.resend import backoff

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange

log = logging.getLogger("wa_router.proxy")


def spawn(ex: Exchange, phase: Phase, coro: Coroutine[Any, Any, None]) -> None:
    ex.enter(phase)
    ex.task = asyncio.get_running_loop().create_task(_guard(ex, coro))


async def _guard(ex: Exchange, coro: Coroutine[Any, Any, None]) -> None:
    try:
        await coro
    except RouterError as e:
        ex.fail(e)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request %s failed", ex.request_id, extra={"request_id": ex.request_id})
        ex.fail(RouterError("internal error"))


async def hold(ex: Exchange) -> None:
    """New here, moving, or on an instance that is down: wait (bounded) for the session."""
    assert ex.session is not None
    ex.use(await ex.router.routable(ex.session, ex.hold_deadline()))


async def connect(ex: Exchange, inst: Instance) -> None:
    try:
        up = await inst.pool.connect(ex.router.config.limits.upstream_connect_timeout)
    except UpstreamError as e:
        ex.router.passive_failure(inst, connect_error=True)
        ex.after_failure(e, inst, None)
        return
    if ex.phase & FINAL:
        up.release(True)
        return
    ex.attach(inst, up)


async def resend(ex: Exchange, failed: Instance) -> None:
    """Give the health checks a moment (or an event) to catch up, then route afresh."""
    deadline = ex.hold_deadline()
    router = ex.router
    await router.changed.wait(max(0.0, min(backoff(ex.retries), deadline - ex.conn.loop_time())))
    if ex.replay:
        ex.body_parts = ex.replay
        ex.body_size = sum(map(len, ex.replay))
    ex.replay = []
    if ex.session is not None:
        ex.enter(Phase.HOLDING)
        inst = await router.routable(ex.session, deadline)
    else:
        inst = router.fleet.least_busy(exclude=failed) or failed
    ex.use(inst)


async def fan_out(ex: Exchange) -> None:
    headers = {"Accept": "application/json"}
    if ex.client_key_line:
        headers["X-Api-Key"] = ex.header_map.get("x-api-key", "")
    headers["X-Request-Id"] = ex.request_id
    body, answered, failed = await ex.router.fan_out(
        ex.method_str, ex.target.decode("latin-1"), headers
    )
    extra = [(b"X-Router-Instance", ",".join(answered).encode())]
    if failed:
        extra.append((b"X-Router-Partial", ",".join(failed).encode()))
    ex.respond_json(200, body, tuple(extra))
