"""router.outbox.routes: which outbox endpoint a request under /outbox asks for (a table)."""

from __future__ import annotations

import pytest

from router.errors import MethodNotAllowed, NotFound
from router.outbox.routes import Route, is_outbox, route


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/outbox/api/sendText", Route("enqueue", "/api/sendText")),
        ("PUT", "/outbox/api/x/y", Route("enqueue", "/api/x/y")),
        ("POST", "/outbox/message/sendText/inst-1", Route("enqueue", "/message/sendText/inst-1")),
        ("POST", "/outbox/campaigns", Route("create_campaign")),
        ("POST", "/outbox/campaigns/cmp_1/messages", Route("add_to_campaign", "cmp_1")),
        ("GET", "/outbox/campaigns/cmp_1", Route("campaign", "cmp_1")),
        ("POST", "/outbox/campaigns/cmp_1/pause", Route("campaign_action", "cmp_1", "pause")),
        ("POST", "/outbox/campaigns/cmp_1/cancel", Route("campaign_action", "cmp_1", "cancel")),
        ("GET", "/outbox/messages/msg_1.s", Route("message", "msg_1.s")),
        ("DELETE", "/outbox/messages/msg_1.s", Route("cancel", "msg_1.s")),
        ("POST", "/outbox/messages/msg_1.s/retry", Route("retry", "msg_1.s")),
        ("GET", "/outbox/sessions/a%40b", Route("session", "a@b")),
    ],
)
def test_routes(method: str, path: str, expected: Route) -> None:
    assert is_outbox(path)
    assert route(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("GET", "/outbox/api/sendText", MethodNotAllowed),  # a GET is not a send
        ("DELETE", "/outbox/api/sendText", MethodNotAllowed),
        ("GET", "/outbox/campaigns", MethodNotAllowed),
        ("PUT", "/outbox/campaigns/cmp_1", MethodNotAllowed),
        ("POST", "/outbox/campaigns/cmp_1/explode", NotFound),
        ("POST", "/outbox/messages/msg_1/nope", NotFound),
        ("POST", "/outbox", NotFound),
        ("POST", "/outbox/", NotFound),
        ("GET", "/outbox/messages/msg_1", None),
    ],
)
def test_refused(method: str, path: str, error: type[Exception] | None) -> None:
    if error is None:
        route(method, path)
        return
    with pytest.raises(error):
        route(method, path)


def test_only_the_outbox_prefix_counts() -> None:
    assert not is_outbox("/outboxes/x") and not is_outbox("/api/outbox") and is_outbox("/outbox")
