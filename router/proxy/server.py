"""The proxy port: client connections parsed with httptools (llhttp), one ``Exchange`` per
request, upstream keep-alive connections from the instance's pool.

The common case (a known session, an idle pooled connection) runs entirely in protocol
callbacks: no task, no future, no ClientSession. Only placement of a new session, opening
a new upstream connection, fan-out and body-dependent routing spawn a task.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import httptools

from router.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    InvalidSessionId,
    MethodNotAllowed,
    NoInstance,
    RequestTimeout,
    RouterError,
    ShuttingDown,
    TooManyConnections,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    UriTooLong,
)
from router.instances import Instance
from router.proxy import access, local
from router.proxy.headers import REQUEST_DROP, RESPONSE_DROP, valid_request_id
from router.proxy.inbound import parse_webhook, session_status
from router.proxy.responses import error_response, json_response, reason
from router.routing import Router
from router.sessions import NEEDS_BODY
from router.transport.upstream import UpstreamConnection
from router.webhooks.model import InboundEvent

log = logging.getLogger("wa_router.proxy")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
PREBUFFER_LIMIT = 256 * 1024  # body bytes held while an upstream connection is being set up
REPLAY_LIMIT = 1024 * 1024  # bodies up to this size can be sent again after a failover
MAX_RETRIES = 8
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})

# Reasons to stop reading from a client, as bits: reading resumes only when none is left.
PAUSE_PIPELINE = 1
PAUSE_BACKPRESSURE = 2
PAUSE_PREBUFFER = 4

# What the connection's deadline means.
DL_NONE = 0
DL_HEADERS = 1
DL_IDLE = 2
DL_ACTIVE = 3
DL_BODY = 4  # reading a request body: the client must keep sending

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}
_INF = float("inf")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"


class ProxyServer:
    """Listening sockets, live connections, request ids and the deadline sweeper."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.all_closed = asyncio.Event()  # set when closing and the last connection ends
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._rid_prefix = secrets.token_hex(4) + "-"
        self._rid_counter = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None

    def next_request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rid_counter):x}"

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_server(
            lambda: ClientConnection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=2048,
        )
        self._servers.append(server)
        self._sweeper = self.loop.create_task(self._sweep())

    @property
    def port(self) -> int:
        sock = self._servers[0].sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close everything."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.exchange is None:
                conn.close()
        try:
            async with asyncio.timeout(timeout):
                if self.connections:
                    await self.all_closed.wait()
        except TimeoutError:
            log.warning("shutdown: aborting %d connections still busy", len(self.connections))
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            await server.wait_closed()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.25)
            now = loop.time()
            for conn in list(self.connections):
                if conn.deadline <= now:
                    conn.deadline_passed()


class ClientConnection(asyncio.Protocol):
    """One client TCP connection; requests on it are answered strictly in order."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop_time = asyncio.get_running_loop().time
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.exchange: Exchange | None = None  # being answered
        self.parsing: Exchange | None = None  # request being read
        self.pipeline: deque[Exchange] = deque()
        self.paused = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.deadline = _INF
        self.deadline_kind = DL_NONE
        self.upgraded = False
        self.tunnel: UpstreamConnection | None = None
        self.closed = False

    # -- lifecycle -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0] if peer else "").encode()
        server = self.server
        if len(server.connections) >= server.router.config.listen.max_connections:
            self.closed = True
            self.transport.write(error_response(
                TooManyConnections("too many open connections (listen.max_connections); retry later"),
                request_id=server.next_request_id(), keep_alive=False,
            ))
            self.transport.close()
            return
        server.connections.add(self)
        self.set_deadline(DL_HEADERS)
        if server.closing:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.server.closing and not self.server.connections:
            self.server.all_closed.set()
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        for ex in (self.exchange, self.parsing, *self.pipeline):
            if ex is not None:
                ex.abort()
        self.exchange = self.parsing = None
        self.pipeline.clear()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    # -- deadlines -----------------------------------------------------------------------

    def set_deadline(self, kind: int) -> None:
        limits = self.server.router.config
        if kind == DL_HEADERS:
            self.deadline = self.loop_time() + limits.limits.client_header_timeout
        elif kind == DL_IDLE:
            self.deadline = self.loop_time() + limits.listen.keepalive_timeout
        elif kind == DL_ACTIVE:
            self.deadline = self.loop_time() + limits.limits.upstream_timeout
        elif kind == DL_BODY:
            self.deadline = self.loop_time() + limits.limits.client_body_timeout
        else:
            self.deadline = _INF
        self.deadline_kind = kind

    def deadline_passed(self) -> None:
        kind = self.deadline_kind
        self.deadline = _INF
        if kind == DL_ACTIVE and self.exchange is not None:
            ex = self.exchange
            if ex.instance is not None and ex.upstream is not None:
                self.server.router.passive_failure(ex.instance, connect_error=False)
            ex.fail(UpstreamTimeout("the instance did not answer within limits.upstream_timeout"))
        elif kind == DL_BODY:
            stalled = self.parsing or self.exchange
            if self.paused:  # we stopped reading (held, or the instance is slow): not the client
                self.set_deadline(DL_BODY)
            elif stalled is not None:
                stalled.fail(RequestTimeout("request body stalled longer than limits.client_body_timeout"),
                        close=True)
                self.close()
            else:
                self.close()
        elif kind == DL_HEADERS and self.exchange is None and self.head_size:
            self.write(
                error_response(
                    RequestTimeout("request headers not received within client_header_timeout"),
                    request_id=self.server.next_request_id(),
                    keep_alive=False,
                )
            )
            self.close()
        elif kind != DL_NONE:
            self.close()

    # -- flow control --------------------------------------------------------------------

    def pause(self, why: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= why

    def resume(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        up = self.tunnel or (self.exchange.upstream if self.exchange else None)
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        up = self.tunnel or (self.exchange.upstream if self.exchange else None)
        if up is not None:
            up.resume_reading()

    # -- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.upgraded:
            if self.exchange is not None:
                self.exchange.tunnel_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as u:
            self.upgraded = True
            rest = data[u.args[0] :]
            if rest and self.exchange is not None:
                self.exchange.tunnel_data(rest)
        except httptools.HttpParserCallbackError as e:
            err = e.__context__
            self.reject(err if isinstance(err, RouterError) else BadRequest("malformed request"))
        except httptools.HttpParserError as e:
            self.reject(BadRequest(f"malformed HTTP request: {_parser_reason(e)}"))

    def reject(self, err: RouterError) -> None:
        """A request that cannot be parsed: answer it if nothing else is, then close."""
        if self.exchange is None or self.exchange.response_started:
            if self.exchange is None:
                self.write(
                    error_response(err, request_id=self.server.next_request_id(), keep_alive=False)
                )
                self.close()
            else:
                self.abort()
        else:
            self.exchange.fail(err, close=True)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0
        if self.exchange is None:
            self.set_deadline(DL_HEADERS)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            raise UriTooLong("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_BYTES or len(self.headers) > MAX_HEADERS:
            raise HeadersTooLarge("request headers too large")

    def on_headers_complete(self) -> None:
        p = self.parser
        ex = Exchange(
            self,
            p.get_method(),
            self.url,
            self.headers,
            p.get_http_version() == "1.1",
            p.should_keep_alive(),
            p.should_upgrade(),
        )
        self.parsing = ex
        if self.exchange is None:
            self.exchange = ex
            self.set_deadline(DL_ACTIVE)
            ex.start()
        else:
            self.pipeline.append(ex)
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if self.deadline_kind == DL_BODY:
            self.set_deadline(DL_ACTIVE if self.exchange is not None else DL_IDLE)
        if ex is not None:
            ex.request_complete()

    # -- exchanges -----------------------------------------------------------------------

    def exchange_done(self, ex: Exchange) -> None:
        """``ex`` is fully answered and its request fully read: next request, or idle."""
        if ex is not self.exchange:
            return
        self.exchange = None
        if ex.close_after or self.server.closing:
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.popleft()
            if not self.pipeline:
                self.resume(PAUSE_PIPELINE)
            self.exchange = nxt
            self.set_deadline(DL_ACTIVE)
            nxt.start()
        else:
            self.set_deadline(DL_IDLE)

    def start_tunnel(self, up: UpstreamConnection, pending: list[bytes]) -> None:
        assert self.transport is not None
        self.tunnel = up
        self.exchange = None
        self.set_deadline(DL_NONE)
        up.start_tunnel(self.transport)
        if pending:
            up.writelines(pending)
        self.resume(PAUSE_PREBUFFER | PAUSE_BACKPRESSURE | PAUSE_PIPELINE)


class Exchange:
    """One request and its response. Also the ``UpstreamListener`` of its connection."""

    __slots__ = (
        "body_parts",
        "body_size",
        "chunked_in",
        "client_key_line",
        "close_after",
        "conn",
        "content_length",
        "eof_delimited",
        "expect_continue",
        "finished",
        "forward_lines",
        "header_map",
        "http11",
        "instance",
        "keep_alive",
        "method",
        "method_str",
        "out",
        "out_chunked",
        "path",
        "query",
        "raw_headers",
        "replay",
        "request_done",
        "request_id",
        "response_done",
        "response_started",
        "retries",
        "router",
        "session",
        "started",
        "status",
        "target",
        "task",
        "tunnel_pending",
        "upgrade",
        "upstream",
        "url",
        "wait_body",
        "webhook",
        "xff",
        "xfh",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.conn = conn
        self.router = conn.server.router
        self.method = method
        self.url = url
        self.raw_headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.close_after = not keep_alive
        self.upgrade = upgrade
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.finished = False
        self.wait_body = False
        self.webhook = False
        self.retries = 0
        self.session: str | None = None
        self.started = conn.loop_time()
        self.status = 0
        # The body as sent, kept (up to REPLAY_LIMIT) so the request can be sent again
        # after a failover; None once it is too large to keep.
        self.replay: list[bytes] | None = []
        self.out_chunked = False
        self.out: list[bytes] = []  # response bytes of the current read, sent in one writev
        self.eof_delimited = False
        self.upstream: UpstreamConnection | None = None
        self.instance: Instance | None = None
        self.task: asyncio.Task[None] | None = None
        self.tunnel_pending: list[bytes] = []
        self.request_id = ""
        self.method_str = ""
        self.path = ""
        self.query = ""
        self.target = b""
        self.forward_lines: list[bytes] = []
        self.header_map: dict[str, str] = {}
        self.client_key_line = b""
        self.xff = b""
        self.xfh = b""
        self.content_length: int | None = None
        self.chunked_in = False
        self.expect_continue = False

    # -- request side --------------------------------------------------------------------

    def start(self) -> None:
        """Headers are in: validate, pick the instance, and send or wait."""
        self._read_headers()
        config = self.router.config
        if self.content_length is not None and self.content_length > config.limits.max_body:
            self.fail(BodyTooLarge(f"request body exceeds limits.max_body ({config.limits.max_body} bytes)"), close=True)
            return
        if not self.target.startswith(b"/"):
            self.fail(BadRequest("request target must be a path"), close=True)
            return
        path = self.path
        keys = config.listen.api_keys
        if keys and path != config.webhooks.path and path not in access.OPEN_PATHS:
            # Webhooks from instances are checked by inbound_hmac_key, not client keys.
            if not access.allowed(access.client_key(self.header_map, self.query), keys):
                self.fail(Unauthorized("missing or wrong API key (X-Api-Key)"))
                return
            self.client_key_line = b""  # the router's key: never forwarded
            self.target = access.strip_query_key(self.target)
        if path == config.webhooks.path and self.router.relay is not None:
            self._start_webhook()
            return
        if path in local.PATHS:
            status, body = local.answer(path, self.router)
            self._respond_json(status, body)
            return
        if (self.method_str, path) in self.router.fan_out_routes:
            self._spawn(self._fan_out())
            return
        try:
            found = self.router.extractor.extract(
                self.method_str, path, self.query, self.header_map, None
            )
            if found is NEEDS_BODY:
                if not self._has_body() or (
                    self.content_length is not None
                    and self.content_length > config.sessions.json_body_limit
                ):
                    found = self.router.extractor.extract(
                        self.method_str, path, self.query, self.header_map, b""
                    )
                elif self.request_done:  # a pipelined request read before its turn
                    found = self.router.extractor.extract(
                        self.method_str, path, self.query, self.header_map, b"".join(self.body_parts)
                    )
                else:
                    self.wait_body = True
                    if self.expect_continue:
                        self.expect_continue = False
                        self.conn.write(_CONTINUE)
                    return
        except InvalidSessionId as e:
            self.fail(e)
            return
        assert found is not NEEDS_BODY
        self._route(found)

    def _read_headers(self) -> None:
        """One pass over the client's headers: what to forward, what to note."""
        conn = self.conn
        m = self.method
        self.method_str = _METHODS.get(m) or m.decode("latin-1")
        url = self.url
        if url[:1] != b"/" and url != b"*":
            try:
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            except httptools.HttpParserInvalidURLError:
                url = b""
        self.target = url
        q = url.find(b"?")
        if q >= 0:
            self.path = url[:q].decode("latin-1")
            self.query = url[q + 1 :].decode("latin-1")
        else:
            self.path = url.decode("latin-1")
        lines = self.forward_lines
        hmap = self.header_map
        rid = b""
        for name, value in self.raw_headers:
            low = name.lower()
            if low in REQUEST_DROP:
                if low == b"host":
                    self.xfh = value
                elif low == b"content-length":
                    self.content_length = int(value)
                    hmap["content-length"] = value.decode("latin-1")
                elif low == b"transfer-encoding":
                    self.chunked_in = True
                    hmap["transfer-encoding"] = value.decode("latin-1")
                elif low == b"x-request-id":
                    if valid_request_id(value):
                        rid = value
                elif low == b"x-forwarded-for":
                    self.xff = value + b", "
                elif low == b"expect":
                    self.expect_continue = value.lower() == b"100-continue"
                elif low == b"upgrade" and self.upgrade:
                    lines += [b"Connection: Upgrade\r\nUpgrade: ", value, _CRLF]
                continue
            hmap[low.decode("latin-1")] = value.decode("latin-1")
            if low == b"x-api-key" or low == b"apikey":
                # Instance credentials: replaced by the instance's own api_key when it has
                # one, dropped when they are the router's own key (listen.api_keys).
                self.client_key_line += name + b": " + value + _CRLF
                continue
            lines += [name, b": ", value, _CRLF]
        self.request_id = rid.decode() if rid else conn.server.next_request_id()

    def _has_body(self) -> bool:
        return self.chunked_in or bool(self.content_length)

    def request_body(self, data: bytes) -> None:
        if self.finished:
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
                up.writelines([b"%x\r\n" % len(data), data, _CRLF])
            else:
                up.write(data)
            return
        self.body_parts.append(data)
        if self.webhook:
            limit = self.router.config.webhooks.max_body
            if self.body_size > limit:
                self.fail(BodyTooLarge(f"webhook body exceeds webhooks.max_body ({limit} bytes)"), close=True)
        elif self.wait_body:
            if self.body_size > self.router.config.sessions.json_body_limit:
                self.wait_body = False
                self._route_with_body(b"")
        elif self.body_size > PREBUFFER_LIMIT:
            self.conn.pause(PAUSE_PREBUFFER)

    def request_complete(self) -> None:
        self.request_done = True
        if self.finished:
            if self.response_done:
                self.conn.exchange_done(self)
            return
        up = self.upstream
        if up is not None:
            if self.chunked_in:
                up.write(_LAST_CHUNK)
        elif self.wait_body:
            self.wait_body = False
            self._route_with_body(b"".join(self.body_parts))
        elif self.webhook:
            self._accept_webhook()
        if self.response_done:
            self.conn.exchange_done(self)

    # -- webhooks from instances (answered here, relayed durably) --------------------------

    def _start_webhook(self) -> None:
        if self.method_str != "POST":
            self.fail(MethodNotAllowed("webhooks are POSTed"))
            return
        limit = self.router.config.webhooks.max_body
        if self.content_length is not None and self.content_length > limit:
            self.fail(BodyTooLarge(f"webhook body exceeds webhooks.max_body ({limit} bytes)"), close=True)
            return
        self.webhook = True
        if self.expect_continue:
            self.expect_continue = False
            self.conn.write(_CONTINUE)
        if self.request_done:  # a pipelined request read before its turn
            self._accept_webhook()

    def _accept_webhook(self) -> None:
        # Callbacks, no task: under load this path runs ~10k times a second, and a task
        # plus a future per request was a fifth of its cost.
        router = self.router
        relay = router.relay
        assert relay is not None
        try:
            event = parse_webhook(b"".join(self.body_parts), self.header_map, router.config.webhooks)
            self.body_parts = []
            relay.accept_nowait((event,), lambda error: self._webhook_stored(event, error))
        except RouterError as e:
            self.fail(e)
        except Exception:
            log.exception("request %s failed", self.request_id, extra={"request_id": self.request_id})
            self.fail(RouterError("internal error"))

    def _webhook_stored(self, event: InboundEvent, error: BaseException | None) -> None:
        """The relay's answer: stored durably (Redis) or queued (memory), or not."""
        if error is not None:
            if isinstance(error, RouterError):
                self.fail(error)
            elif isinstance(error, asyncio.CancelledError):
                self.fail(ShuttingDown("the router is stopping"))
            else:
                log.error("request %s: storing a webhook failed: %r", self.request_id, error,
                          extra={"request_id": self.request_id})
                self.fail(RouterError("internal error"))
            return
        status = session_status(event)
        if status is not None and event.session is not None:
            self.router.record_status(event.session, status)
        body = b'{"status":"accepted","id":' + json.dumps(event.id).encode() + b"}"
        self._respond_json(200, body)

    def tunnel_data(self, data: bytes) -> None:
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
        self._route(found if isinstance(found, str) else None)

    def _route(self, session: str | None) -> None:
        router = self.router
        if session is None:
            if router.config.sessions.unscoped == "reject":
                self.fail(BadRequest("the request names no session (sessions.unscoped: reject)"))
                return
            inst = router.fleet.least_busy()
            if inst is None:
                self.fail(NoInstance("no healthy instance"))
                return
            self._use(inst)
            return
        self.session = session
        inst = router.routable_instance(session)
        if inst is not None:
            self._use(inst)
        else:
            # New here, moving, or on an instance that is down: wait (bounded) for it.
            self._spawn(self._hold())

    def _use(self, inst: Instance) -> None:
        up = inst.pool.acquire_idle()
        if up is not None:
            self._attach(inst, up)
        else:
            self._spawn(self._connect(inst))

    def _hold_deadline(self) -> float:
        return self.started + self.router.config.failover.hold_timeout

    async def _hold(self) -> None:
        assert self.session is not None
        self._use(await self.router.routable(self.session, self._hold_deadline()))

    async def _connect(self, inst: Instance) -> None:
        try:
            up = await inst.pool.connect(self.router.config.limits.upstream_connect_timeout)
        except UpstreamError as e:
            self.router.passive_failure(inst, connect_error=True)
            self._retry_or_fail(e, inst)
            return
        if self.finished:
            up.release(True)
            return
        self._attach(inst, up)

    def _retry_or_fail(self, err: UpstreamError, inst: Instance) -> None:
        """Send again when that is safe: the request never reached the instance, or it is
        idempotent; and its whole body is still at hand. Else answer the error."""
        if (
            not self.finished
            and self.retries < MAX_RETRIES
            and self.request_done
            and self.replay is not None
            and (not err.reached_instance or self.method in IDEMPOTENT)
            and self.conn.loop_time() < self._hold_deadline()
        ):
            self.retries += 1
            self._spawn(self._retry(inst))
        else:
            self.fail(err)

    async def _retry(self, failed: Instance) -> None:
        # Give the health checks a moment (or an event) to catch up, then route afresh.
        backoff = min(0.05 * 2**self.retries, 1.0)
        await self.router.changed.wait(max(0.0, min(backoff, self._hold_deadline() - self.conn.loop_time())))
        if self.replay:
            self.body_parts = self.replay
            self.body_size = sum(map(len, self.replay))
        self.replay = []
        if self.session is not None:
            inst = await self.router.routable(self.session, self._hold_deadline())
        else:
            inst = self.router.fleet.least_busy(exclude=failed) or failed
        self._use(inst)

    def _attach(self, inst: Instance, up: UpstreamConnection) -> None:
        self.instance = inst
        self.upstream = up
        inst.inflight += 1
        up.bind(self, self.method == b"HEAD")
        parts = [
            self.method,
            b" ",
            inst.address.base_path.encode() + self.target if inst.address.base_path else self.target,
            b" HTTP/1.1\r\n",
            inst.host_line,
            *self.forward_lines,
            b"X-Forwarded-For: ",
            self.xff,
            self.conn.peer,
            b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ",
            self.request_id.encode(),
            _CRLF,
            inst.api_key_line or self.client_key_line,
        ]
        if self.xfh:
            parts += [b"X-Forwarded-Host: ", self.xfh, _CRLF]
        if self.chunked_in:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % self.content_length)
        parts.append(_CRLF)
        if self.body_parts:
            if self.chunked_in:
                for chunk in self.body_parts:
                    parts += [b"%x\r\n" % len(chunk), chunk, _CRLF]
            else:
                parts += self.body_parts
            if self.replay is not None:
                if self.body_size <= REPLAY_LIMIT:
                    self.replay = self.body_parts
                else:
                    self.replay = None
            self.body_parts = []
        if self.request_done and self.chunked_in:
            parts.append(_LAST_CHUNK)
        up.write(b"".join(parts))
        if self.expect_continue and not self.request_done:
            self.expect_continue = False
            self.conn.write(_CONTINUE)
        self.conn.resume(PAUSE_PREBUFFER)

    def _detach(self) -> UpstreamConnection | None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            if self.instance is not None:
                self.instance.inflight -= 1
        return up

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.task = asyncio.get_running_loop().create_task(self._guard(coro))

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except RouterError as e:
            self.fail(e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request %s failed", self.request_id, extra={"request_id": self.request_id})
            self.fail(RouterError("internal error"))

    async def _fan_out(self) -> None:
        headers = {"Accept": "application/json"}
        if self.client_key_line:
            headers["X-Api-Key"] = self.header_map.get("x-api-key", "")
        headers["X-Request-Id"] = self.request_id
        body, answered, failed = await self.router.fan_out(
            self.method_str, self.target.decode("latin-1"), headers
        )
        extra = [(b"X-Router-Instance", ",".join(answered).encode())]
        if failed:
            extra.append((b"X-Router-Partial", ",".join(failed).encode()))
        self._respond_json(200, body, tuple(extra))

    # -- response side (UpstreamListener) -------------------------------------------------

    def upstream_head(
        self, status: int, reason_phrase: bytes, headers: list[tuple[bytes, bytes]], body: bool
    ) -> None:
        if self.finished:
            return
        self.response_started = True
        self.status = status
        inst = self.instance
        assert inst is not None
        if status in self.router.passive_statuses:
            self.router.passive_failure(inst, connect_error=False)
        elif inst.passive_failures:
            self.router.passive_success(inst)
        if status == 404 and self.session is not None:
            self.router.not_found(self.session)  # maybe the instance lost it: reconcile
        parts = [b"HTTP/1.1 %d " % status, reason_phrase or reason(status), _CRLF]
        length: bytes | None = None
        chunked = False
        for name, value in headers:
            low = name.lower()
            if low in RESPONSE_DROP:
                if low == b"content-length":
                    length = value
                elif low == b"transfer-encoding":
                    chunked = True
                elif status == 101 and low in (b"upgrade", b"connection"):
                    parts += [name, b": ", value, _CRLF]
                continue
            parts += [name, b": ", value, _CRLF]
        parts += [
            b"X-Router-Instance: ",
            inst.name_bytes,
            b"\r\nX-Request-Id: ",
            self.request_id.encode(),
            _CRLF,
        ]
        if status != 101:
            if self.upgrade or self._body_pending():
                self.close_after = True
            if not body:
                if length is not None:
                    parts += [b"Content-Length: ", length, _CRLF]
            elif length is not None and not chunked:
                parts += [b"Content-Length: ", length, _CRLF]
            elif self.http11:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.out_chunked = True
                self.eof_delimited = not chunked
            else:
                self.close_after = True
                self.eof_delimited = not chunked
            if self.close_after:
                parts.append(b"Connection: close\r\n")
            elif not self.http11:
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(_CRLF)
        # Held until the end of this read so head and body leave in one system call.
        self.out.append(b"".join(parts))
        if status == 101:
            self.upstream_flush()

    def upstream_body(self, data: bytes) -> None:
        if self.out_chunked:
            self.out += (b"%x\r\n" % len(data), data, _CRLF)
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
        if self.out_chunked:
            self.out.append(_LAST_CHUNK)
        self.upstream_flush()
        up = self._detach()
        if up is not None:
            up.release(keep_alive and self.request_done and not self.finished)
        self._response_finished()

    def upstream_upgraded(self, rest: bytes) -> None:
        up = self._detach()
        if up is None or self.finished:
            return
        self.upstream_flush()
        if rest:
            self.conn.write(rest)
        self.finished = True
        self.response_done = True
        if self.instance is not None:
            self.instance.stats.observe(101, self.conn.loop_time() - self.started)
        self.conn.start_tunnel(up, self.tunnel_pending)
        self.tunnel_pending = []

    def upstream_failed(self, err: UpstreamError) -> None:
        up = self._detach()
        if self.finished:
            return
        self.upstream_flush()
        if self.response_started:
            if self.eof_delimited:
                # A close-delimited body ends with the connection: that is success.
                if self.out_chunked:
                    self.conn.write(_LAST_CHUNK)
                self.close_after = True
                self._response_finished()
            else:
                self.finished = True
                self.conn.abort()  # truncated: the client must see it, not a short body
            return
        inst = self.instance
        if inst is None:
            self.fail(err)
            return
        if up is not None and up.used > 1 and not self.retries and self.body_size == 0:
            # A pooled connection the instance closed just as we reused it (the keep-alive
            # race): no answer, no body, nothing lost: send it again on a fresh connection.
            self.retries += 1
            self._spawn(self._connect(inst))
            return
        self.router.passive_failure(inst, connect_error=False)
        self._retry_or_fail(err, inst)

    def upstream_pause_writing(self) -> None:
        self.conn.pause(PAUSE_BACKPRESSURE)

    def upstream_resume_writing(self) -> None:
        self.conn.resume(PAUSE_BACKPRESSURE)

    # -- endings -------------------------------------------------------------------------

    def _response_finished(self) -> None:
        self.response_done = True
        self.finished = True
        inst = self.instance
        (inst.stats if inst is not None else self.router.own_stats).observe(
            self.status, self.conn.loop_time() - self.started
        )
        if self.close_after:
            self.conn.close()
        elif self.request_done:
            self.conn.exchange_done(self)
        # else: a request without a body completes right after; request_complete finishes

    def _body_pending(self) -> bool:
        """Request body bytes are still to come (so the connection cannot be reused
        once the router answers early)."""
        return not self.request_done and self._has_body()

    def _respond_json(
        self, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        if self.finished:
            return
        if self._body_pending():
            self.close_after = True
        self.response_started = True
        self.status = status
        self.conn.write(
            json_response(
                status,
                body,
                request_id=self.request_id,
                keep_alive=not self.close_after,
                head_only=self.method == b"HEAD",
                extra=extra,
            )
        )
        self._response_finished()

    def fail(self, err: RouterError, *, close: bool = False) -> None:
        """Answer with the router's own JSON error, or cut the connection if the response
        has already begun."""
        if self.finished:
            return
        up = self._detach()
        if up is not None:
            up.abort()
        if self.response_started:
            self.finished = True
            self.conn.abort()
            return
        if close or self._body_pending():
            self.close_after = True
        if err.status >= 500:
            log.warning("request %s: %s %s", self.request_id, err.code, err.message,
                        extra={"request_id": self.request_id})
        self.response_started = True
        self.status = err.status
        self.conn.write(
            error_response(
                err,
                request_id=self.request_id or self.conn.server.next_request_id(),
                keep_alive=not self.close_after,
                head_only=self.method == b"HEAD",
            )
        )
        self._response_finished()

    def abort(self) -> None:
        """The client went away."""
        self.finished = True
        up = self._detach()
        if up is not None:
            up.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()


def _parser_reason(e: Exception) -> str:
    text = str(e)
    return text[:80] if text else type(e).__name__
