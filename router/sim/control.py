"""Control endpoints under ``/sim/``: simulated incoming events, forced statuses, stats."""

from __future__ import annotations

import dataclasses
import secrets
import time

from aiohttp import web

from router.sim.model import Status, me_for
from router.sim.outbound import SendFaults
from router.sim.replies import BadRequest, read_json, session_field
from router.sim.state import sim


async def incoming(request: web.Request) -> web.Response:
    """``POST /sim/incoming`` ``{"session","from","text"}``: emit a ``message`` event."""
    body = await read_json(request)
    name = session_field(body, "session")
    st = sim(request)
    session = st.sessions.get(name)
    sender = body.get("from") or "10000000000@c.us"
    text = body.get("text")
    payload = {
        "id": f"false_{sender}_{secrets.token_hex(10).upper()}",
        "timestamp": int(time.time()),
        "from": sender,
        "fromMe": False,
        "source": "app",
        "to": me_for(name)["id"],
        "body": text if isinstance(text, str) else "",
        "hasMedia": False,
        "ack": 1,
    }
    event = st.hub.emit("message", name, session.me(), payload)
    return web.Response(text=event.raw, status=201, content_type="application/json")


async def emit_event(request: web.Request) -> web.Response:
    """``POST /sim/events`` ``{"session","event","payload"}``: emit any event."""
    body = await read_json(request)
    name = session_field(body, "session")
    kind = body.get("event")
    payload = body.get("payload", {})
    if not isinstance(kind, str) or not kind:
        raise BadRequest("'event' is required")
    if not isinstance(payload, dict):
        raise BadRequest("'payload' must be an object")
    st = sim(request)
    session = st.sessions.get(name)
    event = st.hub.emit(kind, name, session.me(), payload)
    return web.Response(text=event.raw, status=201, content_type="application/json")


async def force_status(request: web.Request) -> web.Response:
    """``POST /sim/sessions/{session}/status`` ``{"status": "FAILED"}``: set it directly."""
    body = await read_json(request)
    try:
        status = Status(str(body.get("status")))
    except ValueError:
        raise BadRequest(f"'status' must be one of {[str(s) for s in Status]}") from None
    st = sim(request)
    return web.json_response(st.sessions.force(request.match_info["session"], status).to_json())


async def stats(request: web.Request) -> web.Response:
    """``GET /sim/stats``: counters for tests."""
    st = sim(request)
    sender = st.sender
    return web.json_response(
        {
            "instance": st.name,
            **st.stats.to_json(),
            "webhooks": {
                "url": sender.url if sender else None,
                "sent": sender.sent if sender else 0,
                "failed": sender.failed if sender else 0,
                "retried": sender.retried if sender else 0,
                "dropped": sender.dropped if sender else 0,
                "backlog": sender.backlog if sender else 0,
            },
            "events_emitted": st.hub.emitted,
            "sessions_by_status": st.sessions.registry.by_status(),
            "sessions_total": len(st.sessions.registry),
            "websockets": len(st.websockets),
        }
    )


async def reset(request: web.Request) -> web.Response:
    """``POST /sim/reset[?sessions=true]``: clear counters (and sessions when asked)."""
    st = sim(request)
    st.stats.reset()
    st.hub.emitted = 0
    if st.sender is not None:
        st.sender.reset_counters()
    drop = request.query.get("sessions", "").lower() in ("true", "1", "yes")
    if drop:
        st.sessions.reset()
    return web.json_response({"reset": True, "sessions_dropped": drop})


async def sent(request: web.Request) -> web.Response:
    """``GET /sim/sent[?session=S]``: the messages this instance really sent, in order."""
    return web.json_response(sim(request).outbound.listing(request.query.get("session")))


async def faults(request: web.Request) -> web.Response:
    """``POST /sim/faults``: ``{"sendText": {...}}`` or ``{"clear": true}`` (see
    ``router.sim.outbound``); answers the faults now in force."""
    body = await read_json(request)
    unknown = set(body) - {"sendText", "clear"}
    if unknown:
        raise BadRequest(f"unknown key(s): {sorted(unknown)}")
    out = sim(request).outbound
    if body.get("clear") is True:
        out.faults = SendFaults()
    if "sendText" in body:
        staged = dataclasses.replace(out.faults)
        try:
            staged.set(body["sendText"])
        except ValueError as e:
            raise BadRequest(str(e)) from None
        out.faults = staged
    return web.json_response({"sendText": out.faults.to_json()})


def add_routes(app: web.Application) -> None:
    """Register the ``/sim/*`` routes."""
    r = app.router
    r.add_post("/sim/incoming", incoming)
    r.add_post("/sim/events", emit_event)
    r.add_post("/sim/sessions/{session}/status", force_status)
    r.add_get("/sim/stats", stats)
    r.add_post("/sim/reset", reset)
    r.add_get("/sim/sent", sent)
    r.add_post("/sim/faults", faults)
