"""``Idempotency-Key`` on a proxied POST or PATCH: the exchange's thin layer over the rules
in ``router.idempotency.model``.

The body is read whole (``KEYED``: its SHA-256 is the fingerprint, and the session may be
named in it), then the key is claimed (``CLAIMING``: no task; a callback runs when the
claim, batched with the others of the moment, is answered; a key claimed for a request
that was answered or aborted meanwhile is released). A claimed key is forwarded as any
request, with a ``Pending`` on the exchange that keeps a copy of the response (status,
content type, body up to 1 MiB) as it is relayed; the outcome is kept when the exchange
ends: the response, or ``outcome_unknown`` when the instance may have acted on the request
without the router seeing its answer, or the key is released when the request provably
never reached an instance. Requests without the header never come here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import TYPE_CHECKING

from router.errors import (
    BadRequest,
    IdempotencyInFlight,
    IdempotencyKeyReused,
    InvalidSessionId,
    OutcomeUnknown,
    RouterError,
    StoreUnavailable,
    UpstreamError,
)
from router.idempotency import model
from router.idempotency.model import KEPT_BODY, Record, State, Verdict
from router.idempotency.redis_store import RedisKeys
from router.proxy.access import client_key
from router.proxy.phase import FINAL, Phase
from router.proxy.responses import error_body

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange

log = logging.getLogger("wa_router.proxy")

METHODS = frozenset({b"POST", b"PATCH"})
HEADER = "idempotency-key"
REPLAYED = ((b"Idempotent-Replayed", b"true"),)
# The Content-Type line of a raw response head (kept with the answer, for replays).
_CONTENT_TYPE = re.compile(rb"\r\ncontent-type:([^\r]*)", re.IGNORECASE).search
IN_FLIGHT_MARGIN = 5.0  # beyond upstream_timeout + hold_timeout: a claim this old is orphaned


class Pending:
    """A claimed key whose request is being forwarded: what its outcome will be kept as."""

    __slots__ = ("at", "content_type", "digest", "fingerprint", "parts", "sent", "size",
                 "status", "ttl")

    def __init__(self, digest: str, fingerprint: str, at: float, ttl: float) -> None:
        self.digest = digest
        self.fingerprint = fingerprint
        self.at = at
        self.ttl = ttl
        self.status = 0
        self.content_type = ""
        self.parts: list[bytes] = []
        self.size = 0
        self.sent = False  # written to an instance at least once

    def head(self, status: int, head: bytes) -> None:
        """The instance's response head (its bytes): its status and content type are kept."""
        self.status = status
        m = _CONTENT_TYPE(head)
        if m is not None:
            self.content_type = m.group(1).strip().decode("latin-1")

    def body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= KEPT_BODY:
            self.parts.append(data)


def start(ex: Exchange) -> None:
    """The head of a keyed POST/PATCH is in: check the key, then read the body whole."""
    key = ex.header_map[HEADER]
    if not model.valid_key(key):
        ex.fail(BadRequest(f"Idempotency-Key must be 1 to {model.MAX_KEY} printable characters"))
        return
    if ex.read_whole(Phase.KEYED):
        body_read(ex)


def body_read(ex: Exchange) -> None:
    """The body is in: claim the key. No task: the claim is queued with the others of this
    moment (one Redis call for all of them) and ``Claim.answered`` runs with the answer."""
    try:
        _claim(ex)
    except RouterError as e:
        ex.fail(e)
    except Exception:
        log.exception("request %s failed", ex.request_id, extra={"request_id": ex.request_id})
        ex.fail(RouterError("internal error"))


def _claim(ex: Exchange) -> None:
    keys = ex.conn.server.keys
    assert keys is not None
    router = ex.router
    body = b"".join(ex.body_parts)
    try:
        found = router.extractor.extract(ex.method_str, ex.path, ex.query, ex.header_map, body)
    except InvalidSessionId as e:
        ex.fail(e)
        return
    session = ex.session = found if isinstance(found, str) else None  # also for a replay's log
    client = client_key(ex.header_map, ex.query)
    scope = hashlib.sha256(client.encode()).hexdigest()[:16] if client else ""
    digest = model.digest(scope, session, ex.method_str, ex.path, ex.header_map[HEADER])
    fingerprint = model.fingerprint(body)
    now = router.clock.wall()
    ttl = router.config.outbox.idempotency_ttl
    record = Record(State.IN_FLIGHT, fingerprint, now)
    ex.enter(Phase.CLAIMING)
    claim = Claim(ex, session, digest, fingerprint, now, ttl)
    if isinstance(keys, RedisKeys):
        keys.claim_then(digest, record, ttl, claim.answered)
    else:
        asyncio.ensure_future(keys.claim(digest, record, ttl)).add_done_callback(claim.from_task)


class Claim:
    """A keyed request whose key is being claimed: what it does with the answer."""

    __slots__ = ("digest", "ex", "fingerprint", "now", "session", "ttl")

    def __init__(self, ex: Exchange, session: str | None, digest: str, fingerprint: str,
                 now: float, ttl: float) -> None:
        self.ex = ex
        self.session = session
        self.digest = digest
        self.fingerprint = fingerprint
        self.now = now
        self.ttl = ttl

    def from_task(self, task: asyncio.Future[Record | None]) -> None:
        if task.cancelled():
            self.answered(None, StoreUnavailable("cancelled"))
        else:
            error = task.exception()
            self.answered(None if error is not None else task.result(), error)

    def answered(self, kept: Record | None, error: BaseException | None) -> None:
        """What the key held (None: it is ours now), or why the store did not answer."""
        ex = self.ex
        try:
            self._decide(kept, error)
        except RouterError as e:
            ex.fail(e)
        except Exception:
            log.exception("request %s failed", ex.request_id, extra={"request_id": ex.request_id})
            ex.fail(RouterError("internal error"))

    def _decide(self, kept: Record | None, error: BaseException | None) -> None:
        ex = self.ex
        keys = ex.conn.server.keys
        assert keys is not None
        if error is not None:
            if isinstance(error, StoreUnavailable):
                # Without the store no one can tell a retry from a first request: not sent.
                ex.fail(StoreUnavailable(f"idempotency keys unavailable ({error.message}); "
                                         "try again"))
                return
            raise error
        if ex.phase & FINAL:  # answered or aborted meanwhile (the client went away, say)
            if kept is None:
                keys.release(self.digest)  # ours, and never sent: a retry may go
            return
        config = ex.router.config
        in_flight_for = (config.limits.upstream_timeout + config.failover.hold_timeout
                         + IN_FLIGHT_MARGIN)
        verdict = model.decide(kept, self.fingerprint, self.now, in_flight_for)
        if verdict is Verdict.PROCEED:
            ex.idem = Pending(self.digest, self.fingerprint, self.now, self.ttl)
            ex.route(self.session)
        elif verdict is Verdict.REPLAY:
            assert kept is not None
            ex.replayed = True
            ex.respond_json(kept.status, kept.body, REPLAYED,
                            content_type=kept.content_type.encode("latin-1")
                            or b"application/octet-stream")
        elif verdict is Verdict.IN_FLIGHT:
            ex.fail(IdempotencyInFlight("a request with this Idempotency-Key is still being "
                                        "answered"))
        elif verdict is Verdict.REUSED:
            ex.fail(IdempotencyKeyReused("this Idempotency-Key was used with another body"))
        else:
            assert kept is not None
            if kept.state is State.IN_FLIGHT:  # orphaned by a router that died: settle it
                keys.keep(self.digest, Record(State.UNKNOWN, self.fingerprint, kept.at), self.ttl)
            ex.replayed = True  # the kept outcome (unknown), with Idempotent-Replayed as well
            ex.respond_json(502, error_body(_unknown(), ex.request_id), REPLAYED)


def _unknown() -> OutcomeUnknown:
    return OutcomeUnknown("the instance may or may not have acted on the first request with "
                          "this Idempotency-Key; it is not sent again")


def done(ex: Exchange, p: Pending) -> None:
    """The instance answered in full: keep its response."""
    keys = ex.conn.server.keys
    if keys is not None:
        keys.keep(p.digest, model.kept(p.status, p.content_type, b"".join(p.parts), p.size,
                                       p.fingerprint, p.at), p.ttl)


def failed(ex: Exchange, p: Pending, err: RouterError | None) -> None:
    """The exchange ends without a complete answer (``err``: the router's error, None: the
    client went away or the response was cut)."""
    keys = ex.conn.server.keys
    if keys is None:
        return
    if not p.sent or (isinstance(err, UpstreamError) and not err.reached_instance):
        keys.release(p.digest)  # provably not acted on: a retry may go
    else:
        keys.keep(p.digest, Record(State.UNKNOWN, p.fingerprint, p.at), p.ttl)
