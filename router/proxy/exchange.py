"""One request and its response: the thin layer that does I/O.

An ``Exchange`` reads its request (it is the pure ``RequestHead`` plus the body), routes it,
writes it to an upstream connection and relays the answer. What it decides is pure code
elsewhere: the framing of both heads (``framing``), whether to send again after a failure
(``resend``), and its phase (``phase``: one state, checked on every transition). Webhooks
from instances are answered by ``intake``.

The common case (a known session, an idle pooled connection) runs entirely in protocol
callbacks: no task, no future. Only placement of a new session, holding, opening a new
upstream connection, fan-out and resends spawn a task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from router.errors import (
    BadRequest,
    BodyTooLarge,
    InvalidSessionId,
    NoInstance,
    RouterError,
    Unauthorized,
    UpstreamError,
)
from router.instances import Instance
from router.outbox.routes import is_outbox
from router.proxy import access, idempotent, intake, local, waits
from router.proxy.flow import (
    DL_ACTIVE,
    DL_BODY,
    PAUSE_BACKPRESSURE,
    PAUSE_PREBUFFER,
    PREBUFFER_LIMIT,
)
from router.proxy.framing import (
    CLOSE,
    CONTINUE,
    CRLF,
    LAST_CHUNK,
    OUT_CHUNKED,
    RequestHead,
    chunk,
    response_head,
)
from router.proxy.phase import ENTER_FROM, FINAL, Phase, PhaseError
from router.proxy.resend import REPLAY_LIMIT
from router.proxy.responses import error_response, json_response
from router.sessions import NEEDS_BODY
from router.transport.upstream import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy.connection import ClientConnection

log = logging.getLogger("wa_router.proxy")

# The hot path's transitions, checked inline (a method call each would cost ~1% of a request).
_QUEUED: Final = Phase.QUEUED
_ROUTING: Final = Phase.ROUTING
_WAIT_BODY: Final = Phase.WAIT_BODY
_WEBHOOK: Final = Phase.WEBHOOK
_SENT: Final = Phase.SENT
_STREAMING: Final = Phase.STREAMING
_DONE: Final = Phase.DONE
_ABORTED: Final = Phase.ABORTED
_KEYED: Final = Phase.KEYED
_TO_ROUTING: Final = ENTER_FROM[Phase.ROUTING]
_TO_SENT: Final = ENTER_FROM[Phase.SENT]
_TO_STREAMING: Final = ENTER_FROM[Phase.STREAMING]
_TO_DONE: Final = ENTER_FROM[Phase.DONE]
_STARTED: Final = Phase.STREAMING | FINAL  # the response began: too late for the router's own


class Exchange(RequestHead):
    """One request and its response. Also the ``UpstreamListener`` of its connection."""

    __slots__ = (
        "body_parts",
        "body_size",
        "bytes_out",
        "close_after",
        "conn",
        "framing",
        "http11",
        "idem",
        "instance",
        "out",
        "phase",
        "replay",
        "replayed",
        "request_done",
        "retries",
        "router",
        "session",
        "started",
        "status",
        "task",
        "tunnel_pending",
        "upstream",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http11: bool | None,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        """``http11`` None: the client's parser is asked only if it must be."""
        RequestHead.__init__(self, method, url, headers, upgrade)
        self.conn = conn
        self.router = conn.server.router
        if http11 is None:
            # llhttp keeps an HTTP/1.0 connection alive only when asked (Connection:
            # keep-alive), so alive and unasked means 1.1; asking its version costs 0.8 us.
            http11 = ((keep_alive and not self.connection_header)
                      or conn.parser.get_http_version() == "1.1")
        self.http11 = http11
        self.close_after = not keep_alive
        self.phase = _QUEUED
        self.request_done = False  # the client's parser is past this request's end
        self.body_parts: list[bytes] = []  # body read and not yet written upstream
        self.body_size = 0
        self.retries = 0
        self.session: str | None = None
        self.started = conn.loop_time()
        self.status = 0
        self.bytes_out = 0  # response body bytes to the client (the access log's "bytes")
        self.replayed = False  # answered from an Idempotency-Key's kept response
        # The body as sent, kept (up to REPLAY_LIMIT) so the request can be sent again
        # after a failover; None once it is too large to keep.
        self.replay: list[bytes] | None = []
        self.framing = 0  # OUT_CHUNKED | EOF_DELIMITED, from the response head
        self.out: list[bytes] = []  # response bytes of the current read, sent in one writev
        self.upstream: UpstreamConnection | None = None
        self.instance: Instance | None = None
        self.task: asyncio.Task[None] | None = None
        self.tunnel_pending: list[bytes] | None = None  # client bytes after an Upgrade
        self.idem: idempotent.Pending | None = None  # an Idempotency-Key's claim (forwarded)

    def __repr__(self) -> str:
        # The path only: the query may carry a key (x-api-key=...); headers are never shown.
        path = self.path
        where = f" instance={self.instance.name}" if self.instance is not None else ""
        session = f" session={self.session!r}" if self.session is not None else ""
        return (
            f"<Exchange {self.phase.name} {self.method.decode('latin-1')} {path[:200]}"
            f" id={self.request_id or '-'}{session}{where}"
            f"{f' retries={self.retries}' if self.retries else ''}"
            f"{'' if self.request_done else ' reading-body'}>"
        )

    def enter(self, new: Phase) -> None:
        """Go to phase ``new``; a transition the state machine lacks is a bug."""
        if not self.phase & ENTER_FROM[new]:
            raise PhaseError(self.phase, new)
        self.phase = new

    @property
    def response_started(self) -> bool:
        return bool(self.phase & _STARTED)

    # -- request side --------------------------------------------------------------------

    def start(self) -> None:
        """Its turn on the connection: validate, pick the instance, and send or wait."""
        if not self.phase & _TO_ROUTING:
            if self.phase & FINAL:  # answered (an error) or aborted while it was queued
                return
            raise PhaseError(self.phase, _ROUTING)
        self.phase = _ROUTING
        if not self.request_id:
            self.request_id = self.conn.server.next_request_id()
        config = self.router.config
        if self.content_length is not None and self.content_length > config.limits.max_body:
            self.fail(BodyTooLarge(f"request body exceeds limits.max_body ({config.limits.max_body} bytes)"), close=True)
            return
        if not self.target.startswith(b"/"):
            self.fail(BadRequest("request target must be a path"), close=True)
            return
        path = self.path
        if config.listen.api_keys and not access.admit(self, config.listen.api_keys, config.webhooks.path):
            self.fail(Unauthorized("missing or wrong API key (X-Api-Key)"))
            return
        if path == config.webhooks.path and self.router.relay is not None:
            intake.start(self)
            return
        if self.conn.server.outbox is not None and is_outbox(path):
            intake.start(self, outbox=True)
            return
        if path in local.PATHS:
            self.respond_json(*local.answer(path, self.router))
            return
        if (self.method_str, path) in self.router.fan_out_routes:
            waits.spawn(self, Phase.FAN_OUT, waits.fan_out(self))
            return
        if (self.method in idempotent.METHODS and idempotent.HEADER in self.header_map
                and self.conn.server.keys is not None):
            idempotent.start(self)
            return
        extract = self.router.extractor.extract
        try:
            found = extract(self.method_str, path, self.query, self.header_map, None)
            if found is NEEDS_BODY:
                if not self.has_body() or (
                    self.content_length is not None
                    and self.content_length > config.sessions.json_body_limit
                ):
                    found = extract(self.method_str, path, self.query, self.header_map, b"")
                elif self.request_done:  # a pipelined request read before its turn
                    body = b"".join(self.body_parts)
                    found = extract(self.method_str, path, self.query, self.header_map, body)
                else:
                    self.enter(Phase.WAIT_BODY)
                    if self.expect_continue:
                        self.expect_continue = False
                        self.conn.write(CONTINUE)
                    return
        except InvalidSessionId as e:
            self.fail(e)
            return
        assert found is not NEEDS_BODY
        self.route(found)

    def read_whole(self, phase: Phase) -> bool:
        """Enter ``phase``, which reads the body whole before answering (a webhook, an
        ``/outbox`` request, a keyed POST); True when it is all in already."""
        self.enter(phase)
        if self.expect_continue:
            self.expect_continue = False
            self.conn.write(CONTINUE)
        return self.request_done  # a pipelined request read before its turn

    def _body_pending(self) -> bool:
        """Request body bytes are still to come (so the connection cannot be reused
        once the router answers early)."""
        return not self.request_done and self.has_body()

    def request_body(self, data: bytes) -> None:
        phase = self.phase
        if phase & FINAL:
            return
        self.body_size += len(data)
        limit = self.router.config.limits.max_body
        if self.body_size > limit:
            self.fail(BodyTooLarge(f"request body exceeds limits.max_body ({limit} bytes)"), close=True)
            return
        self.conn.set_deadline(DL_BODY)
        up = self.upstream
        if up is not None:
            if self.replay is not None:
                if self.body_size <= REPLAY_LIMIT:
                    self.replay.append(data)
                else:
                    self.replay = None
            if self.chunked_in:
                up.writelines(chunk(data))
            else:
                up.write(data)
            return
        self.body_parts.append(data)
        if phase is _WEBHOOK:
            # Read whole (never paused): a webhook within webhooks.max_body, an /outbox
            # request (a campaign of thousands of messages) within limits.max_body.
            if not is_outbox(self.path):
                err = intake.too_large(self.body_size, self.router.config.webhooks)
                if err is not None:
                    self.fail(err, close=True)
        elif phase is _WAIT_BODY:
            if self.body_size > self.router.config.sessions.json_body_limit:
                self._route_with_body(b"")
        elif phase is _KEYED:
            pass  # read whole (limits.max_body): the fingerprint is of all of it
        elif self.body_size > PREBUFFER_LIMIT:
            self.conn.pause(PAUSE_PREBUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        phase = self.phase
        if phase & FINAL:
            if phase is not _ABORTED:
                self.conn.exchange_done(self)
            return
        up = self.upstream
        if up is not None:
            if self.chunked_in:
                up.write(LAST_CHUNK)
        elif phase is _WAIT_BODY:
            self._route_with_body(b"".join(self.body_parts))
        elif phase is _WEBHOOK:
            intake.accept(self)
        elif phase is _KEYED:
            idempotent.body_read(self)
        if self.phase is _DONE:
            self.conn.exchange_done(self)

    def tunnel_data(self, data: bytes) -> None:
        if self.tunnel_pending is None:
            self.tunnel_pending = [data]
        else:
            self.tunnel_pending.append(data)

    # -- routing -------------------------------------------------------------------------

    def _route_with_body(self, body: bytes) -> None:
        try:
            found = self.router.extractor.extract(
                self.method_str, self.path, self.query, self.header_map, body
            )
        except InvalidSessionId as e:
            self.fail(e)
            return
        self.route(found if isinstance(found, str) else None)

    def route(self, session: str | None) -> None:
        router = self.router
        if session is None:
            if router.config.sessions.unscoped == "reject":
                self.fail(BadRequest("the request names no session (sessions.unscoped: reject)"))
                return
            inst = router.fleet.least_busy()
            if inst is None:
                self.fail(NoInstance("no healthy instance"))
                return
            self.use(inst)
            return
        self.session = session
        inst = router.routable_instance(session)
        if inst is not None:
            self.use(inst)
        else:
            # New here, moving, or on an instance that is down: wait (bounded) for it.
            waits.spawn(self, Phase.HOLDING, waits.hold(self))

    def use(self, inst: Instance) -> None:
        up = inst.pool.acquire_idle()
        if up is not None:
            self.attach(inst, up)
        else:
            waits.spawn(self, Phase.CONNECTING, waits.connect(self, inst))

    def hold_deadline(self) -> float:
        return self.started + self.router.config.failover.hold_timeout

    def attach(self, inst: Instance, up: UpstreamConnection) -> None:
        if not self.phase & _TO_SENT:
            raise PhaseError(self.phase, _SENT)
        self.phase = _SENT
        self.instance = inst
        self.upstream = up
        inst.inflight += 1
        if self.idem is not None:
            self.idem.sent = True
        up.bind(self, self.method == b"HEAD")
        conn = self.conn
        if conn.deadline_kind == DL_ACTIVE:  # upstream_timeout counts from the send, not the hold
            conn.deadline = conn.loop_time() + self.router.config.limits.upstream_timeout
        body = self.body_parts
        if body:
            if self.replay is not None:
                self.replay = body if self.body_size <= REPLAY_LIMIT else None
            self.body_parts = []
        up.write(self.serialize(
            inst.address.base_path, inst.host_line, inst.api_key_line, self.conn.peer, body,
            self.request_done,
        ))
        if self.expect_continue and not self.request_done:
            self.expect_continue = False
            conn.write(CONTINUE)
        if conn.paused & PAUSE_PREBUFFER:
            conn.resume(PAUSE_PREBUFFER)

    def _detach(self) -> UpstreamConnection | None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            if self.instance is not None:
                self.instance.inflight -= 1
        return up

    # -- response side (UpstreamListener) -------------------------------------------------

    def upstream_head(self, status: int, head: bytes, body: bool) -> None:
        phase = self.phase
        if phase & FINAL:
            return
        if not phase & _TO_STREAMING:
            raise PhaseError(phase, _STREAMING)
        self.phase = _STREAMING
        self.status = status
        inst = self.instance
        assert inst is not None
        router = self.router
        if status in router.passive_statuses:
            router.passive_failure(inst, connect_error=False)
        elif inst.passive_failures:
            router.passive_success(inst)
        if status == 404 and self.session is not None:
            router.not_found(self.session)  # maybe the instance lost it: reconcile
        close = self.close_after or (
            status != 101 and (self.upgrade or (not self.request_done and self.has_body()))
        )
        out_head, framing = response_head(
            head, status, body, self.http11, close, inst.name_bytes, self.request_id.encode(),
        )
        if framing & CLOSE:
            self.close_after = True
        self.framing = framing
        if self.idem is not None:
            self.idem.head(status, head)
        # Held until the end of this read so head and body leave in one system call.
        self.out.append(out_head)
        if status == 101:
            self.upstream_flush()

    def upstream_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.idem is not None:
            self.idem.body(data)
        if self.framing & OUT_CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, CRLF)
        else:
            self.out.append(data)

    def upstream_flush(self) -> None:
        conn = self.conn
        conn.deadline = conn.loop_time() + self.router.config.limits.upstream_timeout
        out = self.out
        if out:
            if not conn.closed:
                assert conn.transport is not None
                conn.transport.writelines(out)
            out.clear()

    def upstream_done(self, keep_alive: bool) -> None:
        out = self.out
        if self.framing & OUT_CHUNKED:
            out.append(LAST_CHUNK)
        conn = self.conn
        if out and not conn.closed:  # the last bytes: the deadline is the next request's now
            assert conn.transport is not None
            conn.transport.writelines(out)
        out.clear()
        up = self._detach()
        if up is not None:
            up.release(keep_alive and self.request_done and not self.phase & FINAL)
        self.finish()

    def upstream_upgraded(self, rest: bytes) -> None:
        up = self._detach()
        if up is None or self.phase & FINAL:
            return
        self.upstream_flush()
        if rest:
            self.conn.write(rest)
        self.enter(Phase.TUNNEL)
        if self.instance is not None:
            self.instance.stats.observe(101, self.conn.loop_time() - self.started)
        self._log_ended(101)  # its line now: the tunnel's end is the connection's
        self.conn.start_tunnel(up, self.tunnel_pending or [])
        self.tunnel_pending = None

    def upstream_failed(self, err: UpstreamError) -> None:
        up = self._detach()
        if self.phase & FINAL:
            return
        self.upstream_flush()
        inst = self.instance
        if inst is None:
            self.fail(err)
            return
        waits.after_failure(self, err, inst, up)

    def upstream_pause_writing(self) -> None:
        self.conn.pause(PAUSE_BACKPRESSURE)

    def upstream_resume_writing(self) -> None:
        self.conn.resume(PAUSE_BACKPRESSURE)

    # -- endings -------------------------------------------------------------------------

    def finish(self) -> None:
        """The response is complete: account for it, then next request or close."""
        if not self.phase & _TO_DONE:
            raise PhaseError(self.phase, _DONE)
        self.phase = _DONE
        if self.idem is not None:  # a keyed request answered in full: keep the answer
            idempotent.done(self, self.idem)
            self.idem = None
        inst = self.instance
        now = self.conn.loop_time()
        (inst.stats if inst is not None else self.router.own_stats).observe(
            self.status, now - self.started)
        access = self.conn.server.access
        if access is not None:
            access.request(self, now, self.status)
        if self.close_after:
            self.conn.close()
        elif self.request_done:
            self.conn.exchange_done(self)
        # else: a request without a body completes right after; request_complete finishes

    def cut(self) -> None:
        """The response began and cannot be completed: the client must see it cut (an
        aborted connection), not a short body."""
        self.enter(Phase.ABORTED)
        self.conn.abort()
        self._log_ended(self.status)  # the status its head had, as nginx logs it

    def _log_ended(self, status: int) -> None:
        """The access log's line for an exchange that ends without ``finish``."""
        access = self.conn.server.access
        if access is not None:
            access.request(self, self.conn.loop_time(), status)

    def respond_json(
        self, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = (),
        content_type: bytes = b"application/json",
    ) -> None:
        """The router's own answer (local endpoints, fan-out, a stored webhook, a kept
        response replayed)."""
        if self.phase & FINAL:
            return
        if self._body_pending():
            self.close_after = True
        self.status = status
        self.bytes_out = 0 if self.method == b"HEAD" else len(body)
        self.conn.write(json_response(
            status, body, request_id=self.request_id, keep_alive=not self.close_after,
            head_only=self.method == b"HEAD", extra=extra, content_type=content_type,
        ))
        self.finish()

    def fail(self, err: RouterError, *, close: bool = False) -> None:
        """Answer with the router's own JSON error, or cut the connection if the response
        has already begun."""
        if self.phase & FINAL:
            return
        if self.idem is not None:  # a keyed request: its outcome, or the key released
            idempotent.failed(self, self.idem, err)
            self.idem = None
        up = self._detach()
        if up is not None:
            up.abort()
        if self.phase & _STARTED:
            self.cut()
            return
        if close or self._body_pending():
            self.close_after = True
        if err.status >= 500:
            log.warning("request %s: %s %s", self.request_id, err.code, err.message,
                        extra={"request_id": self.request_id})
        self.status = err.status
        if not self.request_id:  # failed before its turn: the id it is answered with is logged
            self.request_id = self.conn.server.next_request_id()
        answer = error_response(
            err, request_id=self.request_id, keep_alive=not self.close_after,
            head_only=self.method == b"HEAD",
        )
        if self.method != b"HEAD":
            self.bytes_out = len(answer) - answer.index(b"\r\n\r\n") - 4
        self.conn.write(answer)
        self.finish()

    def abort(self) -> None:
        """The client went away."""
        phase = self.phase
        if not phase & FINAL:
            self.phase = Phase.ABORTED
            # nginx's 499: the client closed before the answer began (else the status sent)
            self._log_ended(self.status if phase is _STREAMING else 499)
        if self.idem is not None:
            idempotent.failed(self, self.idem, None)
            self.idem = None
        up = self._detach()
        if up is not None:
            up.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()
