"""The exchange's slow paths: failures of the instance, and everything that needs a task.

``after_failure`` applies the pure resend decision (``resend.after_failure``). The waits
(holding a request until its session is routable, opening an upstream connection, backing
off before a resend, fan-out) run as one task per exchange (``spawn``), under a guard that
turns an error into the router's answer; the exchange's phase says which wait it is in.
The common case (a known session, a warm pooled connection) never comes here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from router.errors import RouterError, UpstreamError, UpstreamTimeout
from router.instances import Instance
from router.proxy.framing import EOF_DELIMITED, LAST_CHUNK, OUT_CHUNKED
from router.proxy.phase import FINAL, Phase
from router.proxy.resend import Resend, backoff
from router.proxy.resend import after_failure as decide
from router.transport.upstream import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange

log = logging.getLogger("wa_router.proxy")


def after_failure(ex: Exchange, err: UpstreamError, inst: Instance, up: UpstreamConnection | None) -> None:
    """The instance failed this request: connecting to it (``up`` None), or on ``up``."""
    if ex.phase & FINAL:
        return
    decision = decide(
        reached=err.reached_instance,
        responded=ex.response_started,
        eof_delimited=bool(ex.framing & EOF_DELIMITED),
        reused=up is not None and up.used > 1,
        retries=ex.retries,
        body_sent=ex.body_size,
        body_complete=ex.request_done,
        body_at_hand=ex.replay is not None,
        method=ex.method,
        time_left=ex.hold_deadline() - ex.conn.loop_time(),
        timed_out=isinstance(err, UpstreamTimeout),
        instance_healthy=inst.healthy,
    )
    if decision is Resend.FINISH:
        if ex.framing & OUT_CHUNKED:
            ex.conn.write(LAST_CHUNK)
        ex.close_after = True
        ex.finish()
    elif decision is Resend.CUT:
        ex.cut()
    elif decision is Resend.RECONNECT:
        ex.retries += 1
        spawn(ex, Phase.CONNECTING, connect(ex, inst))
    else:
        if up is not None:  # a connect error was counted when connecting
            ex.router.passive_failure(inst, connect_error=False)
        if decision is Resend.REROUTE:
            ex.retries += 1
            spawn(ex, Phase.BACKOFF, resend(ex, inst))
        else:
            ex.fail(err)


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
    inst = await ex.router.routable(ex.session, ex.hold_deadline())
    if not ex.phase & FINAL:  # else answered meanwhile (say, its body stalled)
        ex.use(inst)


async def connect(ex: Exchange, inst: Instance) -> None:
    try:
        up = await inst.pool.connect(ex.router.config.limits.upstream_connect_timeout)
    except UpstreamError as e:
        ex.router.passive_failure(inst, connect_error=True)
        after_failure(ex, e, inst, None)
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
    if ex.phase & FINAL:
        return
    if ex.replay:
        ex.body_parts = ex.replay
        ex.body_size = sum(map(len, ex.replay))
    ex.replay = []
    if ex.session is not None:
        ex.enter(Phase.HOLDING)
        inst = await router.routable(ex.session, deadline)
    else:
        inst = router.fleet.least_busy(exclude=failed) or failed
    if not ex.phase & FINAL:
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
