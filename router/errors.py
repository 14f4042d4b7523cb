"""One error tree. Every error the router answers with is a ``RouterError``; its class
fixes the HTTP status and the ``error`` code of the JSON body (see ``router.proxy.responses``).
"""

from __future__ import annotations

from collections.abc import Sequence


class RouterError(Exception):
    """Base of every error the router reports on purpose."""

    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None
    problems: Sequence[object] | None = None  # every problem, when there are several

    def __init__(self, message: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if retry_after is not None:
            self.retry_after = retry_after


# -- configuration ---------------------------------------------------------------------


class ConfigError(RouterError):
    """A config could not be loaded; ``problems`` lists every ``path.to.key: message``."""

    status = 400
    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) or "invalid config")
        self.problems: list[str] = problems


# -- client errors (4xx) ---------------------------------------------------------------


class ClientError(RouterError):
    status = 400
    code = "bad_request"


class BadRequest(ClientError):
    pass


class InvalidItems(BadRequest):
    """A request with many items (a campaign): every bad one, by index; nothing was done."""

    def __init__(self, message: str, problems: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.problems = list(problems)


class IdempotencyKeyReused(ClientError):
    status = 422
    code = "idempotency_key_reused"


class InvalidSessionId(ClientError):
    code = "invalid_session_id"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class IdempotencyInFlight(Conflict):
    """A retry with the same Idempotency-Key while the first request is being answered."""

    code = "idempotency_in_flight"


class BodyTooLarge(ClientError):
    status = 413
    code = "body_too_large"


class UriTooLong(ClientError):
    status = 414
    code = "uri_too_long"


class HeadersTooLarge(ClientError):
    status = 431
    code = "headers_too_large"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


# -- upstream errors (5xx about an instance) --------------------------------------------


class UpstreamError(RouterError):
    """The instance could not be reached or answered badly."""

    status = 502
    code = "upstream_error"
    # False when the request provably never reached the instance: safe to send again.
    reached_instance = True


class OutcomeUnknown(UpstreamError):
    """Kept for an Idempotency-Key: the instance may or may not have acted on the request
    (it died with it in flight); it is never sent again."""

    code = "outcome_unknown"


class UpstreamConnectError(UpstreamError):
    """The connection was refused or reset before the request was sent."""

    reached_instance = False


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamConnectTimeout(UpstreamTimeout):
    reached_instance = False


# -- availability (503) -----------------------------------------------------------------


class Unavailable(RouterError):
    status = 503
    code = "unavailable"
    retry_after = 1


class NoInstance(Unavailable):
    code = "no_instance"


class SessionMoving(Unavailable):
    code = "session_moving"
    retry_after = 5


class StoreUnavailable(Unavailable):
    code = "store_unavailable"
    retry_after = 2


class ShuttingDown(Unavailable):
    code = "shutting_down"


class TooManyConnections(Unavailable):
    code = "too_many_connections"
