"""Built-in rules for Evolution API (EvolutionAPI/evolution-api), checked against its
express routers.

Every instance-scoped route is ``/{group}/{action}[/{param}]/{instanceName}``: the
instance is the last segment (``/message/sendText/{i}``, ``/instance/connect/{i}``,
``/typebot/fetch/{botId}/{i}``, ``/chatwoot/webhook/{i}``, ...). The exceptions are
``POST /instance/create`` (body ``instanceName``) and ``GET /instance/fetchInstances``
(unscoped; routed to the owner when ``?instanceName=`` picks one). Paths outside the
known groups (``/``, ``/manager/...``, ``/assets/...``, ``/webhook/meta``,
``/webhook/evolution``, ``/evohub/...``) are unscoped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from router.sessions.common import (
    NEEDS_BODY,
    BodyView,
    Extracted,
    IdCheck,
    Missing,
    path_segment,
    query_get,
)

# First path segments of the instance-scoped routers (lower case: express matches
# case-insensitively).
_GROUPS: Final = frozenset(
    s.lower()
    for s in (
        "instance", "message", "chat", "group", "call", "business", "label", "template",
        "settings", "proxy", "baileys",
        # events
        "webhook", "websocket", "rabbitmq", "pusher", "sqs", "kafka", "nats",
        # chatbots and storage
        "chatwoot", "typebot", "openai", "dify", "flowise", "n8n", "evolutionBot", "evoai",
        "s3",
    )
)  # fmt: skip


class EvolutionProfile:
    """Instance name of an Evolution API request."""

    __slots__ = ("_check", "_limit")

    def __init__(self, check: IdCheck, body_limit: int) -> None:
        self._check = check
        self._limit = body_limit

    def __call__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        view: BodyView | None,
    ) -> Extracted:
        if path.endswith("/") and len(path) > 1:
            path = path[:-1]  # express ignores one trailing slash
        # Only the first two words and the last one matter: no full split.
        parts = path.split("/", 3)
        n = len(parts)
        if n < 3:
            return None
        group = parts[1]
        if group not in _GROUPS:
            group = group.lower()
            if group not in _GROUPS:
                return None
        if n == 3:
            if group == "instance":
                return self._instance_root(method, parts[2].lower(), query, headers, body, view)
            return None  # e.g. /webhook/meta, /webhook/evolution
        return self._check(path_segment(path.rpartition("/")[2]), "path")

    def _instance_root(
        self,
        method: str,
        action: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        view: BodyView | None,
    ) -> Extracted:
        if action == "create" and method == "POST":
            if view is None:
                view = BodyView(headers, body, self._limit)
            value = view.field(("instanceName",), form=True)
            if value is NEEDS_BODY:
                return NEEDS_BODY
            if isinstance(value, Missing):
                return None
            return self._check.any(value, "body field 'instanceName'")
        if action == "fetchinstances":
            value = query_get(query, "instanceName")
            return None if value is None else self._check(value, "query parameter 'instanceName'")
        return None
