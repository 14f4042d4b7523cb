"""HTTP handlers of the simulated WAHA API (the subset in the contract) and the echo."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from router.sim.events import Subscriber
from router.sim.media import DEFAULT_FILE_BYTES, QR_PNG, SCREENSHOT_PNG, file_chunks
from router.sim.model import Status, me_for, now_ms
from router.sim.outbound import ACK_NAMES, SentMessage
from router.sim.replies import (
    API_KEY_QUERY,
    DEFAULT_SESSION,
    BadRequest,
    error,
    read_json,
    session_field,
    session_json,
)
from router.sim.state import sim

ECHO_BODY_LIMIT = 1024 * 1024
MAX_FILE_BYTES = 1 << 40
ECHO_HEADERS = (
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-session-id",
)
NOT_WORKING = "Session status is not as expected. Try again later or restart the session"


# -- health ----------------------------------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    """``GET /ping``."""
    return web.json_response({"message": "pong"})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: NestJS terminus style."""
    return web.json_response({"status": "ok", "info": {}, "error": {}, "details": {}})


# -- sessions --------------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /api/sessions[?all=true]``: only non-STOPPED sessions unless ``all``."""
    all_ = request.query.get("all", "").lower() in ("true", "1", "yes")
    return web.json_response(sim(request).sessions.registry.listing(all_=all_))


async def create_session(request: web.Request) -> web.Response:
    """``POST /api/sessions`` ``{"name", "start": true}``: 201, or 422 when it exists."""
    body = await read_json(request)
    name = session_field(body, "name")
    start = body.get("start", True)
    st = sim(request)
    st.stats.call(name, "create")
    st.sessions.create(name, start=start is not False)
    return session_json(request, name, 201)


async def get_session(request: web.Request) -> web.Response:
    """``GET /api/sessions/{session}``."""
    return session_json(request, request.match_info["session"])


async def delete_session(request: web.Request) -> web.Response:
    """``DELETE /api/sessions/{session}``: stop and forget (drops its auth in real WAHA)."""
    name = request.match_info["session"]
    st = sim(request)
    st.stats.call(name, "delete")
    return web.json_response(st.sessions.delete(name).to_json())


def _act(request: web.Request, name: str, action: str) -> web.Response:
    st = sim(request)
    st.stats.call(name, action)
    manager = st.sessions
    if action == "start":
        manager.start(name)
    elif action == "stop":
        manager.stop(name)
    elif action == "restart":
        manager.restart(name)
    else:
        manager.logout(name)
    return session_json(request, name, 201)


async def session_action(request: web.Request) -> web.Response:
    """``POST /api/sessions/{session}/start|stop|restart|logout``."""
    return _act(request, request.match_info["session"], request.match_info["action"])


async def deprecated_action(request: web.Request) -> web.Response:
    """Deprecated ``POST /api/sessions/start|stop|logout`` with body ``name``."""
    body = await read_json(request)
    return _act(request, session_field(body, "name"), request.match_info["action"])


# -- messages --------------------------------------------------------------------------


async def send_text(request: web.Request) -> web.Response:
    """``POST /api/sendText``: 201 when WORKING here, 404 unknown here, 422 not WORKING.

    A send is recorded (``/sim/sent``), then followed by ``message.any`` and, after
    ``--ack-delay`` each, ``message.ack`` events (ack 2, then 3). Faults set through
    ``/sim/faults`` apply first (``router.sim.outbound``)."""
    body = await read_json(request)
    name = session_field(body, "session")
    chat_id = body.get("chatId")
    if not isinstance(chat_id, str) or not chat_id:
        raise BadRequest("'chatId' is required")
    st = sim(request)
    st.stats.call(name, "sendText")
    out = st.outbound
    status = out.faults.take_status()
    if status is not None:
        return error(status, "Simulated failure", f"simulated failure ({status}) set by /sim/faults")
    session = await st.sessions.settle(name, st.send_wait)
    if session.status is not Status.WORKING:
        return error(
            422,
            NOT_WORKING,
            NOT_WORKING,
            session=name,
            status=str(session.status),
            expected=[str(Status.WORKING)],
        )
    if out.faults.delay:
        await asyncio.sleep(out.faults.delay)
    raw_text = body.get("text")
    text = raw_text if isinstance(raw_text, str) else ""
    me = session.me()
    message_id = f"true_{chat_id}_{secrets.token_hex(10).upper()}"
    message = {
        "id": message_id,
        "timestamp": int(time.time()),
        "from": me_for(name)["id"],
        "fromMe": True,
        "to": chat_id,
        "body": text,
        "hasMedia": False,
        "ack": 1,
    }
    out.record(SentMessage(message_id, name, chat_id, text, now_ms()))
    st.hub.emit("message.any", name, me, {**message, "source": "api"})

    def ack(level: int) -> None:
        st.hub.emit("message.ack", name, me, {**message, "ack": level, "ackName": ACK_NAMES[level]})

    out.acknowledge(ack)
    if out.faults.take_drop():
        # Sent, but the answer is lost: the client cannot tell whether it went out.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    return web.json_response({**message, "session": name}, status=201)


# -- media -----------------------------------------------------------------------------


async def auth_qr(request: web.Request) -> web.Response:
    """``GET /api/{session}/auth/qr[?format=image|raw]``: a tiny PNG, or JSON."""
    name = request.match_info["session"]
    sim(request).sessions.get(name)
    fmt = request.query.get("format", "image")
    if fmt == "raw":
        return web.json_response({"value": f"2@sim-{name},{secrets.token_hex(8)}"})
    if "application/json" in request.headers.get("Accept", ""):
        data = base64.b64encode(QR_PNG).decode()
        return web.json_response({"mimetype": "image/png", "data": data})
    return web.Response(body=QR_PNG, content_type="image/png")


async def screenshot(request: web.Request) -> web.Response:
    """``GET /api/screenshot?session=s``: a small PNG."""
    name = request.query.get("session") or DEFAULT_SESSION
    sim(request).sessions.get(name)
    return web.Response(body=SCREENSHOT_PNG, content_type="image/png")


async def download_file(request: web.Request) -> web.StreamResponse:
    """``GET /api/files/{session}/{file}?bytes=N``: generated while streamed, 64 KiB at a time.

    Byte ``i`` of every file is ``i % 251`` (see ``router.sim.media.pattern``). Served for
    any session name, known here or not: it is a streaming fixture, not session state.
    """
    try:
        size = int(request.query.get("bytes", DEFAULT_FILE_BYTES))
    except ValueError:
        raise BadRequest("'bytes' must be an integer") from None
    if not 0 <= size <= MAX_FILE_BYTES:
        raise BadRequest(f"'bytes' must be between 0 and {MAX_FILE_BYTES}")
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{request.match_info["file"]}"',
        }
    )
    resp.content_length = size
    await resp.prepare(request)
    if request.method != "HEAD":
        for chunk in file_chunks(size):
            await resp.write(chunk)
    await resp.write_eof()
    return resp


# -- websocket -------------------------------------------------------------------------


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws?session=s|*[&events=a,b]``: echoes every message back unchanged and pushes
    the session's events as the webhook JSON (objects with ``"id": "evt_..."`` and
    ``"event"``)."""
    st = sim(request)
    session = request.query.get("session") or "*"
    wanted = {e.strip() for e in request.query.get("events", "*").split(",") if e.strip()}
    events = None if not wanted or "*" in wanted else frozenset(wanted)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sub = Subscriber(session, events)
    lock = asyncio.Lock()

    async def pump() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                text = await sub.queue.get()
                async with lock:
                    await ws.send_str(text)

    st.hub.subscribers.add(sub)
    st.websockets.add(ws)
    pump_task = asyncio.create_task(pump(), name="sim-ws-pump")
    try:
        async for msg in ws:
            async with lock:
                if msg.type is WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
    except ConnectionError:
        pass
    finally:
        st.hub.subscribers.discard(sub)
        st.websockets.discard(ws)
        pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump_task
    return ws


# -- echo ------------------------------------------------------------------------------


async def echo(request: web.Request) -> web.Response:
    """Any other request: 200 with what arrived, so routing can be checked on any path.

    The body is read as a stream; up to 1 MiB it is returned (JSON, else text), beyond
    that only its size and SHA-256. The API key is never echoed, only its presence.
    """
    digest = hashlib.sha256()
    size = 0
    kept = bytearray()
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
        if size <= ECHO_BODY_LIMIT:
            kept += chunk
    body: Any = None
    if 0 < size <= ECHO_BODY_LIMIT:
        try:
            body = json.loads(kept)
        except ValueError:
            body = kept.decode("utf-8", "replace")
    headers: dict[str, Any] = {h: request.headers.get(h) for h in ECHO_HEADERS}
    headers["x-api-key-present"] = "X-Api-Key" in request.headers or API_KEY_QUERY in request.query
    query = {k: v for k, v in request.query.items() if k.lower() != API_KEY_QUERY}
    return web.json_response(
        {
            "instance": sim(request).name,
            "method": request.method,
            "path": request.path,
            "query": query,
            "body": body,
            "body_size": size,
            "body_sha256": digest.hexdigest(),
            "body_truncated": size > ECHO_BODY_LIMIT,
            "headers": headers,
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the WAHA routes (the echo catch-all is ``add_echo``, registered last)."""
    r = app.router
    r.add_get("/ping", ping)
    r.add_get("/health", health)
    r.add_get("/api/sessions", list_sessions)
    r.add_post("/api/sessions", create_session)
    r.add_post("/api/sessions/{action:start|stop|logout}", deprecated_action)
    r.add_get("/api/sessions/{session}", get_session)
    r.add_delete("/api/sessions/{session}", delete_session)
    r.add_post("/api/sessions/{session}/{action:start|stop|restart|logout}", session_action)
    r.add_post("/api/sendText", send_text)
    r.add_get("/api/{session}/auth/qr", auth_qr)
    r.add_get("/api/screenshot", screenshot)
    r.add_get("/api/files/{session}/{file}", download_file)
    r.add_get("/ws", websocket)


def add_echo(app: web.Application) -> None:
    """The catch-all echo route (must come after every other route)."""
    app.router.add_route("*", "/{tail:.*}", echo, name="echo")
