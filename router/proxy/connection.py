"""One client TCP connection on the proxy port, parsed with httptools (llhttp).

Requests on a connection are answered strictly in order: one ``Exchange`` is answered, the
ones read after it wait in the pipeline (and the connection stops reading). The connection
owns the socket, the parser, the deadline and the reasons reading is paused; the exchange
owns everything about its request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from router.errors import (
    BadRequest,
    HeadersTooLarge,
    RequestTimeout,
    RouterError,
    TooManyConnections,
    UpstreamTimeout,
    UriTooLong,
)
from router.proxy.exchange import Exchange
from router.proxy.flow import (
    DL_ACTIVE,
    DL_BODY,
    DL_HEADERS,
    DL_IDLE,
    DL_NONE,
    PAUSE_BACKPRESSURE,
    PAUSE_PIPELINE,
    PAUSE_PREBUFFER,
)
from router.proxy.phase import Phase
from router.proxy.responses import error_response
from router.transport.upstream import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy.server import ProxyServer

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 128
_INF: Final = float("inf")
# Waits that end by their own deadline (hold_timeout, the connect timeout, the backoff, the
# key store's): limits.upstream_timeout counts from the send (``Exchange.attach``).
_BOUNDED_WAITS: Final = Phase.HOLDING | Phase.CONNECTING | Phase.BACKOFF | Phase.CLAIMING


class ClientConnection(asyncio.Protocol):
    """One client TCP connection; requests on it are answered strictly in order."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.router = server.router
        self.loop_time = asyncio.get_running_loop().time
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.client = ""  # the peer's address as text (the access log's "client")
        self.exchange: Exchange | None = None  # being answered
        self.parsing: Exchange | None = None  # request being read
        self.pipeline: deque[Exchange] = deque()
        self.paused = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.in_head = False  # between on_message_begin and on_headers_complete
        self.deadline = _INF
        self.deadline_kind = DL_NONE
        self.upgraded = False
        self.tunnel: UpstreamConnection | None = None
        self.closed = False

    def __repr__(self) -> str:
        ex = self.exchange
        state = (
            "closed" if self.closed else "tunnel" if self.tunnel is not None
            else repr(ex) if ex is not None else "reading" if self.head_size else "idle"
        )
        queued = f" queued={len(self.pipeline)}" if self.pipeline else ""
        paused = f" paused={self.paused}" if self.paused else ""
        return f"<ClientConnection {self.peer.decode('latin-1') or '?'} {state}{queued}{paused}>"

    # -- lifecycle -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.peer = self.client.encode()
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
        limits = self.router.config
        if kind == DL_ACTIVE:
            self.deadline = self.loop_time() + limits.limits.upstream_timeout
        elif kind == DL_IDLE:
            self.deadline = self.loop_time() + limits.listen.keepalive_timeout
        elif kind == DL_HEADERS:
            self.deadline = self.loop_time() + limits.limits.client_header_timeout
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
            if ex.phase & _BOUNDED_WAITS:  # each bounded by its own deadline; the send re-arms
                self.set_deadline(DL_ACTIVE)
                return
            err = UpstreamTimeout("the instance did not answer within limits.upstream_timeout")
            up = ex.upstream
            if ex.instance is not None and up is not None:
                # The request is stuck on that connection: never reuse it. If the instance
                # has meanwhile been seen down (a partition, a hung process), an idempotent
                # request is held and sent again once its session moved; else 504.
                up.abort()
                ex.upstream_failed(err)
            else:
                ex.fail(err)
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
            if self.in_head and self.exchange is None and self.deadline_kind != DL_HEADERS:
                # A head began in this read and is not complete: it has client_header_timeout.
                # (Set here, not when it begins: most heads complete in the read they begin.)
                self.set_deadline(DL_HEADERS)
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
        self.in_head = True

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
        self.in_head = False
        p = self.parser
        ex = Exchange(
            self,
            p.get_method(),
            self.url,
            self.headers,
            None,  # HTTP/1.1 or not: the exchange asks the parser only if it must
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
        if ex.close_after or self.closed or self.server.closing:
            self.close()  # and requests queued behind it are never sent
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


def _parser_reason(e: Exception) -> str:
    text = str(e)
    return text[:80] if text else type(e).__name__
