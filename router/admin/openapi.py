"""The admin API described as OpenAPI 3.0 (served at ``/admin/openapi.json``).

Kept next to the handlers it describes; tests fuzz a live router with it (schemathesis) and
check every route is described.
"""

from __future__ import annotations

from typing import Any

from router import __version__

_ERROR = {
    "type": "object",
    "required": ["error", "message", "request_id"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "request_id": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}
_ASSIGNMENT = {
    "type": "object",
    "required": ["session", "instance", "epoch", "state"],
    "properties": {
        "session": {"type": "string"},
        "instance": {"type": "string"},
        "epoch": {"type": "integer"},
        "state": {"type": "string"},
    },
}
_INSTANCE = {
    "type": "object",
    "required": ["name", "url", "state", "sessions", "weight", "max_sessions", "inflight"],
    "properties": {
        "name": {"type": "string"},
        "url": {"type": "string"},
        "state": {"type": "string", "enum": ["healthy", "unhealthy", "ejected", "draining"]},
        "sessions": {"type": "integer"},
        "weight": {"type": "number"},
        "max_sessions": {"type": "integer", "nullable": True},
        "inflight": {"type": "integer"},
    },
}
_OUTBOX_SESSION = {
    "type": "object",
    "required": ["session", "depth", "paused", "sent"],
    "properties": {
        "session": {"type": "string"},
        "depth": {"type": "object"},
        "paused": {"type": "boolean"},
        "next_send_not_before": {"type": "number", "nullable": True},
        "sent": {"type": "object"},
    },
}
_CAMPAIGN = {
    "type": "object",
    "required": ["id", "name", "state", "total", "counts", "created"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "paused", "cancelled", "finished"]},
        "total": {"type": "integer"}, "counts": {"type": "object"}, "created": {"type": "number"},
        "finished": {"type": "number", "nullable": True},
        "eta_seconds": {"type": "number", "nullable": True},
    },
}
_CAMPAIGN_ID = {"name": "campaign", "in": "path", "required": True, "schema": {"type": "string"}}
_DRAIN_VIEW = {
    "type": "object",
    "required": ["instance", "state", "sessions", "drained"],
    "properties": {
        "instance": {"type": "string"},
        "state": {"type": "string"},
        "sessions": {"type": "integer"},
        "drained": {"type": "boolean"},
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ERROR, "error") for c in codes}


def _op(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_errors(401, *errors)}, **extra}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_SESSION = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}
# A session id as sessions.id_pattern allows by default (others: 400 invalid_session_id).
_SESSION_ID = {"name": "session", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.@:-]{1,128}$"}}
_INT = {"type": "integer"}


def spec() -> dict[str, Any]:
    open_: dict[str, Any] = {"security": []}
    return {
        "openapi": "3.0.3",
        "info": {"title": "wa-router admin API", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "alive", "responses": {"200": _json({"type": "object"})}, **open_}},
            "/readyz": {"get": {"summary": "can route", "responses": {
                "200": _json({"type": "object"}), "503": _json({"type": "object"}, "not ready")}, **open_}},
            "/metrics": {"get": {"summary": "Prometheus text format", "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "404": _json(_ERROR, "metrics disabled")}, **open_}},
            "/admin/openapi.json": {"get": {"summary": "this document",
                                            "responses": {"200": _json({"type": "object"})}, **open_}},
            "/admin/instances": {"get": _op("instances", _json({"type": "array", "items": _INSTANCE}))},
            "/admin/overview": {"get": _op("everything the dashboard shows", _json({"type": "object"}))},
            "/admin/sessions": {"get": _op(
                "assignments, sorted by session", _json({"type": "array", "items": _ASSIGNMENT}), 400, 404,
                parameters=[
                    {"name": "instance", "in": "query", "schema": {"type": "string"}},
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    {"name": "offset", "in": "query", "schema": {**_INT, "minimum": 0, "maximum": 10**9}},
                    {"name": "limit", "in": "query", "schema": {**_INT, "minimum": 1, "maximum": 10**9}},
                ])},
            "/admin/sessions/{session}": {"get": _op("one assignment", _json(_ASSIGNMENT), 404,
                                                     parameters=[_SESSION])},
            "/admin/sessions/{session}/move": {"post": _op(
                "move a session (held, stopped, reassigned, restored)", _json(_ASSIGNMENT), 400, 404, 409, 502,
                parameters=[_SESSION],
                requestBody={"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["instance"],
                    "properties": {"instance": {"type": "string"}}}}}},
            )},
            "/admin/instances/{name}/drain": {"post": _op(
                "drain: no new sessions, its sessions move away", _json(_DRAIN_VIEW), 400, 404, 503,
                parameters=[_NAME, {"name": "wait", "in": "query",
                                    "schema": {"type": "number", "minimum": 0, "maximum": 3600}}])},
            "/admin/instances/{name}/undrain": {"post": _op(
                "take new sessions again", _json(_DRAIN_VIEW), 404, 503, parameters=[_NAME])},
            "/admin/rebalance": {"post": _op(
                "planned (dry_run=1) or started moves", _json({
                    "type": "object", "required": ["dry_run", "moves", "count"],
                    "properties": {"dry_run": {"type": "boolean"}, "count": _INT, "moves": {
                        "type": "array", "items": {"type": "object", "properties": {
                            "session": {"type": "string"}, "from": {"type": "string"},
                            "to": {"type": "string"}}}}}}), 400, 409,
                parameters=[{"name": "dry_run", "in": "query", "schema": {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no"]}}])},
            "/admin/reload": {"post": _op(
                "reload the config file", _json({"type": "object", "properties": {
                    "result": {"type": "string"}, "changes": {"type": "array", "items": {"type": "string"}}}}),
                400, 503)},
            "/admin/webhooks/dead": {"get": _op(
                "dead-lettered webhooks, newest first", _json({"type": "array", "items": {"type": "object"}}),
                400, 404, 503, parameters=[{"name": "limit", "in": "query", "schema": {**_INT, "minimum": 1, "maximum": 10000}}])},
            "/admin/webhooks/dead/replay": {"post": _op(
                "queue dead webhooks (all, or these ids) again", _json({
                    "type": "object", "properties": {"replayed": _INT}}), 400, 404, 503,
                requestBody={"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}}}}}}},
            )},
            "/admin/outbox": {"get": _op(
                "queued sends: totals by state, deepest session queues, paused sessions, "
                "unacked sends, campaigns",
                _json({"type": "object", "required": ["totals", "deepest", "campaigns",
                                                      "paused_sessions", "unacked"]}))},
            "/admin/outbox/sessions/{session}": {"get": _op(
                "one session's queue", _json(_OUTBOX_SESSION), 400, parameters=[_SESSION_ID])},
            "/admin/outbox/campaigns/{campaign}": {"get": _op(
                "one campaign", _json(_CAMPAIGN), 404, parameters=[_CAMPAIGN_ID])},
            **{f"/admin/outbox/campaigns/{{campaign}}/{action}": {"post": _op(
                f"{action} a campaign", _json(_CAMPAIGN), 404, 409, parameters=[_CAMPAIGN_ID])}
               for action in ("pause", "resume", "cancel")},
            "/admin/outbox/sessions/{session}/pause": {"post": _op(
                "hold a session's queue", _json(_OUTBOX_SESSION), 400, parameters=[_SESSION_ID])},
            "/admin/outbox/sessions/{session}/resume": {"post": _op(
                "let a session's queue send again", _json(_OUTBOX_SESSION), 400, parameters=[_SESSION_ID])},
            "/admin/events": {"get": _op(
                "recent events, newest first", _json({"type": "array", "items": {"type": "object"}}), 400,
                parameters=[{"name": "limit", "in": "query", "schema": {**_INT, "minimum": 1, "maximum": 1000}},
                            {"name": "kind", "in": "query", "schema": {"type": "string"}}])},
            "/dashboard": {"get": {"summary": "the live dashboard page", "responses": {
                "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
                **open_}},
        },
    }
