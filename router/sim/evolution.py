"""``--flavor evolution``: the calls of Evolution API v2 the router needs (instances are
sessions), answered as Evolution API answers them (docs/evolution-control-plane.md). As in
the WAHA flavour, auth lives in shared storage: any instance can connect any name."""

from __future__ import annotations

import functools
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from router.sim.model import Session, Status, now_ms
from router.sim.outbound import ACK_NAMES, SentMessage
from router.sim.replies import BadRequest, read_json
from router.sim.state import SimState, sim

AUTH_HEADER = "apikey"
OPEN_PATHS = frozenset({"/"})
INTEGRATION = "WHATSAPP-BAILEYS"
STATE = {  # Baileys connection states
    Status.WORKING: "open",
    Status.STARTING: "connecting",
    Status.SCAN_QR_CODE: "connecting",
    Status.STOPPED: "close",
    Status.FAILED: "close",
}


def evo_error(http_status: int, error: str, *messages: str) -> web.Response:
    """Evolution API's error body."""
    return web.json_response({"status": http_status, "error": error,
                              "response": {"message": list(messages)}}, status=http_status)


def _missing(name: str) -> web.Response:
    return evo_error(404, "Not Found", f'The "{name}" instance does not exist')


def _state(session: Session) -> dict[str, Any]:
    return {"instance": {"instanceName": session.name, "state": STATE[session.status]}}


Action = Callable[[SimState, Session], Awaitable[web.Response]]


def _known(call: str | None = None) -> Callable[[Action], Callable[[web.Request], Awaitable[web.Response]]]:
    """A handler of an instance this server knows (Evolution's 404 otherwise), given the
    sim's state and the session; ``call``: counted in ``/sim/stats`` under that name."""

    def wrap(action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        @functools.wraps(action)
        async def handler(request: web.Request) -> web.Response:
            st = sim(request)
            session = st.sessions.registry.get(request.match_info["instance"])
            if session is None:
                return _missing(request.match_info["instance"])
            if call is not None:
                st.stats.call(session.name, call)
            return await action(st, session)

        return handler

    return wrap


async def welcome(request: web.Request) -> web.Response:
    """``GET /``: open, what Evolution API answers (a health check's target)."""
    return web.json_response({"status": 200, "message": "Welcome to the Evolution API, it is working!",
                              "version": "2.3.6-sim", "clientName": sim(request).name})


async def create(request: web.Request) -> web.Response:
    """``POST /instance/create`` ``{"instanceName", "qrcode"?}``: 201; a used name 403."""
    body = await read_json(request)
    name = body.get("instanceName")
    if not isinstance(name, str) or not name:
        return evo_error(400, "Bad Request", "instanceName is required")
    st = sim(request)
    st.stats.call(name, "create")
    if name in st.sessions.registry:
        return evo_error(403, "Forbidden", f'This name "{name}" is already in use.')
    session = st.sessions.create(name, start=body.get("qrcode") is True)
    return web.json_response({
        "instance": {"instanceName": name, "instanceId": str(uuid.uuid4()), "integration": INTEGRATION,
                     "status": STATE[session.status]},
        "hash": secrets.token_hex(16).upper(),
    }, status=201)


async def connect(request: web.Request) -> web.Response:
    """``GET /instance/connect/{instance}``: start it (its auth is shared); an open one
    answers its state, a connecting one its (empty) QR object."""
    name = request.match_info["instance"]
    st = sim(request)
    st.stats.call(name, "start")
    session = st.sessions.registry.get(name)
    if session is not None and session.status is Status.WORKING:
        return web.json_response(_state(session))
    st.sessions.start(name)
    return web.json_response({"pairingCode": None, "code": None, "base64": None, "count": 0})


@_known()
async def connection_state(st: SimState, session: Session) -> web.Response:
    """``GET /instance/connectionState/{instance}``."""
    return web.json_response(_state(session))


async def fetch_instances(request: web.Request) -> web.Response:
    """``GET /instance/fetchInstances[?instanceName=]``: the instances this server knows."""
    st = sim(request)
    wanted = request.query.get("instanceName")
    rows = [{"id": s.name, "name": s.name, "connectionStatus": STATE[s.status],
             "ownerJid": (s.me() or {}).get("id"), "profileName": s.name, "integration": INTEGRATION,
             "clientName": st.name}
            for s in st.sessions.registry if wanted is None or s.name == wanted]
    if wanted is not None and not rows:
        return evo_error(404, "Not Found", f'Instance "{wanted}" not found')
    return web.json_response(rows)


@_known("restart")
async def restart(st: SimState, session: Session) -> web.Response:
    """``POST /instance/restart/{instance}``: reconnects at once (not a stop)."""
    if session.status not in (Status.WORKING, Status.STARTING):
        return web.json_response({"error": True, "message": f'The "{session.name}" instance is not connected'})
    st.sessions.restart(session.name)
    return web.json_response(_state(session))


@_known("logout")
async def logout(st: SimState, session: Session) -> web.Response:
    """``DELETE /instance/logout/{instance}``: ends it and drops its auth (never the router)."""
    if STATE[session.status] == "close":
        return evo_error(400, "Bad Request", f'The "{session.name}" instance is not connected')
    st.sessions.logout(session.name)
    return web.json_response({"status": "SUCCESS", "error": False,
                              "response": {"message": "Instance logged out"}})


@_known("delete")
async def delete(st: SimState, session: Session) -> web.Response:
    """``DELETE /instance/delete/{instance}``: logs out and forgets it."""
    st.sessions.delete(session.name)
    return web.json_response({"status": "SUCCESS", "error": False,
                              "response": {"message": "Instance deleted"}})


async def send_text(request: web.Request) -> web.Response:
    """``POST /message/sendText/{instance}`` ``{"number", "text"}``: 201 when open here;
    recorded in ``/sim/sent`` and followed by the same events as the WAHA flavour's."""
    name = request.match_info["instance"]
    body = await read_json(request)
    number = body.get("number")
    if not isinstance(number, str) or not number:
        raise BadRequest("'number' is required")
    st = sim(request)
    st.stats.call(name, "sendText")
    out = st.outbound
    status = out.faults.take_status()
    if status is not None:
        return evo_error(status, "Simulated failure", "set by /sim/faults")
    if name not in st.sessions.registry:
        return _missing(name)
    session = await st.sessions.settle(name, st.send_wait)
    if session.status is not Status.WORKING:
        return evo_error(400, "Bad Request", "Connection Closed")
    raw_text = body.get("text")
    text = raw_text if isinstance(raw_text, str) else ""
    jid = number if "@" in number else f"{number}@s.whatsapp.net"
    message_id = "BAE5" + secrets.token_hex(6).upper()
    out.record(SentMessage(message_id, name, number, text, now_ms()))
    me = session.me()
    event = {"id": message_id, "timestamp": int(time.time()), "fromMe": True, "to": jid,
             "body": text, "hasMedia": False, "ack": 1}
    st.hub.emit("message.any", name, me, {**event, "source": "api"})

    def ack(level: int) -> None:
        st.hub.emit("message.ack", name, me, {**event, "ack": level, "ackName": ACK_NAMES[level]})

    out.acknowledge(ack)
    return web.json_response({
        "key": {"remoteJid": jid, "fromMe": True, "id": message_id},
        "pushName": "", "status": "PENDING", "message": {"conversation": text},
        "messageType": "conversation", "messageTimestamp": int(time.time()),
        "instanceId": name, "source": "unknown",
    }, status=201)


def add_routes(app: web.Application) -> None:
    """Register the Evolution API routes (the echo catch-all comes after them)."""
    r = app.router
    r.add_get("/", welcome)
    r.add_post("/instance/create", create)
    r.add_get("/instance/connect/{instance}", connect)
    r.add_get("/instance/connectionState/{instance}", connection_state)
    r.add_get("/instance/fetchInstances", fetch_instances)
    r.add_post("/instance/restart/{instance}", restart)
    r.add_delete("/instance/logout/{instance}", logout)
    r.add_delete("/instance/delete/{instance}", delete)
    r.add_post("/message/sendText/{instance}", send_text)
