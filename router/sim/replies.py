"""Shared bits of the simulator's handlers: JSON errors and request parsing."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from router.sim.state import sim

DEFAULT_SESSION = "default"
API_KEY_QUERY = "x-api-key"


def error(http_status: int, error: str, message: str, /, **extra: Any) -> web.Response:
    """A JSON error in NestJS/WAHA style."""
    return web.json_response(
        {"statusCode": http_status, "error": error, "message": message, **extra},
        status=http_status,
    )


def not_found(name: str) -> web.Response:
    """WAHA's 404 for a session this instance does not know."""
    return error(
        404,
        "Session not found",
        f"We didn't find a session with name '{name}'.\n"
        f"Please start it first by using POST /api/sessions/{name}/start request",
        session=name,
    )


class BadRequest(Exception):
    """Turned into a 400 JSON answer by the error middleware."""


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body; ``{}`` when empty."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object")
    return data


def session_field(body: dict[str, Any], key: str) -> str:
    """A session name from a body field; missing means ``"default"`` as in WAHA."""
    value = body.get(key)
    if value is None or value == "":
        return DEFAULT_SESSION
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string")
    return value


def session_json(request: web.Request, name: str, status: int = 200) -> web.Response:
    """The session's JSON."""
    return web.json_response(sim(request).sessions.get(name).to_json(), status=status)
