"""Responses the router writes itself: JSON errors and small JSON answers.

This is the one place where a ``RouterError`` becomes an HTTP answer.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from router.errors import RouterError

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def error_body(err: RouterError, request_id: str) -> bytes:
    body: dict[str, object] = {"error": err.code, "message": err.message, "request_id": request_id}
    if err.problems is not None:
        body["problems"] = list(err.problems)  # every one (check-config's, a campaign's items)
    return json.dumps(body, separators=(",", ":")).encode()


def json_response(
    status: int,
    body: bytes,
    *,
    request_id: str,
    keep_alive: bool,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    content_type: bytes = b"application/json",
) -> bytes:
    """A complete HTTP/1.1 response with a JSON body (or another ``content_type``: a
    response kept for an Idempotency-Key)."""
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason(status)),
        b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body)),
        b"X-Request-Id: ",
        request_id.encode("latin-1"),
        b"\r\n",
    ]
    for name, value in extra:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_response(
    err: RouterError, *, request_id: str, keep_alive: bool, head_only: bool = False
) -> bytes:
    extra: tuple[tuple[bytes, bytes], ...] = ()
    if err.retry_after is not None:
        extra = ((b"Retry-After", str(err.retry_after).encode()),)
    return json_response(
        err.status,
        error_body(err, request_id),
        request_id=request_id,
        keep_alive=keep_alive,
        head_only=head_only,
        extra=extra,
    )
