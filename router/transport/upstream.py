"""Keep-alive connections to instances, parsed with httptools (llhttp).

An ``UpstreamConnection`` is bound to at most one exchange at a time and reports the
response to it through a narrow interface (``UpstreamListener``). Completion is signalled
after ``feed_data`` returns, never from inside a parser callback, so an exchange can hand
the connection back to the pool (and another exchange reuse it) without re-entering the
parser.

The response head is reported as the bytes llhttp accepted, not as parsed headers: the
parser gets no per-header callback (a Python call per header), and the exchange rewrites
the few lines it must with one scan (``router.proxy.framing.response_head``). The bytes of
a head are kept only until llhttp has seen it whole.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final, Protocol, cast

import httptools

from router.errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamError
from router.transport.address import Address

_ssl_context: ssl.SSLContext | None = None
# A response head (with any 1xx before it) larger than this is refused: nginx's largest
# default buffers for a proxied head are 4-8 KiB; Node.js allows 16 KiB of headers.
MAX_HEAD: Final = 64 * 1024


def _client_ssl() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class UpstreamListener(Protocol):
    """What a connection reports to the exchange it serves."""

    def upstream_head(self, status: int, head: bytes, body: bool) -> None:
        """The final response head (status line to the blank line, as received)."""

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_flush(self) -> None:
        """End of one read from the instance: send what it produced to the client."""

    def upstream_done(self, keep_alive: bool) -> None: ...

    def upstream_upgraded(self, rest: bytes) -> None: ...

    def upstream_failed(self, err: UpstreamError) -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an instance."""

    __slots__ = (
        "_done",
        "_head_at",
        "_head_request",
        "_keep_alive",
        "_received",
        "_skip",
        "closed",
        "listener",
        "parser",
        "pool",
        "read_paused",
        "transport",
        "tunnel",
        "used",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.listener: UpstreamListener | None = None
        self.tunnel: asyncio.Transport | None = None  # the client side, after an upgrade
        self.closed = False
        self.read_paused = False
        self.used = 0  # requests sent on this connection
        # Bytes of the response since the request was sent while its head is incomplete, and
        # where in them the next head starts (-1: the final head was reported).
        self._received = b""
        self._head_at = -1
        self._head_request = False
        self._skip = False  # ignore the rest of this message (HEAD, informational)
        self._done = False
        self._keep_alive = False

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        elif self.tunnel is not None:
            state = "tunnel"
        else:
            state = "idle" if self.listener is None else f"serving {self.listener!r}"
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        local = f" from :{sock[1]}" if isinstance(sock, tuple) and len(sock) > 1 else ""
        paused = " read-paused" if self.read_paused else ""
        return (f"<UpstreamConnection {self.pool.address.origin}{local} {state}"
                f" requests={self.used}{paused}>")

    # -- use by an exchange --------------------------------------------------------------

    def bind(self, listener: UpstreamListener, head_request: bool) -> None:
        self.listener = listener
        self._head_request = head_request
        self._received = b""
        self._head_at = 0
        self.used += 1

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def release(self, keep_alive: bool) -> None:
        """Back to the pool, or closed."""
        self.listener = None
        if keep_alive and not self.closed:
            self.resume_reading()
            self.pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        self.listener = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.listener = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def start_tunnel(self, client: asyncio.Transport) -> None:
        self.tunnel = client
        self.listener = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        listener = self.listener
        if listener is None:
            # Bytes on an idle connection: the instance broke protocol; never reuse it.
            self.abort()
            return
        if self._head_at >= 0:
            received = self._received
            self._received = received + data if received else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as u:
            self._reset()
            listener.upstream_upgraded(data[u.args[0] :])
            return
        except httptools.HttpParserError:
            self.abort()
            listener.upstream_failed(UpstreamError("invalid HTTP response from the instance"))
            return
        if self._head_at < 0:
            self._received = b""
        elif len(self._received) > MAX_HEAD:  # still no end of the head
            self.abort()
            listener.upstream_failed(UpstreamError("the instance's response head is too large"))
            return
        if self._done:
            keep_alive = self._keep_alive
            if self._head_request:
                # llhttp cannot be told a response was to HEAD: start a fresh parser.
                self.parser = httptools.HttpResponseParser(self)
            self._reset()
            listener.upstream_done(keep_alive)
        else:
            listener.upstream_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            return
        listener = self.listener
        self.listener = None
        if listener is not None:
            listener.upstream_failed(UpstreamError("the instance closed the connection"))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_resume_writing()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._skip = False

    def on_headers_complete(self) -> None:
        # llhttp accepted a head that ends here: its bytes run from where it began to the
        # first empty line after that (llhttp requires CRLF line ends).
        received, start = self._received, self._head_at
        end = received.find(b"\r\n\r\n", start) + 4
        if end < 4 or start < 0:
            raise ValueError("response head not found")  # feed_data: HttpParserCallbackError
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self._skip = True  # 100 Continue, 103 Early Hints: wait for the final answer
            self._head_at = end
            return
        self._head_at = -1
        listener = self.listener
        if listener is None:
            return
        body = not (self._head_request or status in (204, 304) or status == 101)
        listener.upstream_head(status, received[start:end], body)
        if self._head_request:
            self._skip = True
            self._done = True
            self._keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self._skip and self.listener is not None:
            self.listener.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._skip:
            self._skip = False
            return
        # Read it now: llhttp resets its flags once feed_data moves past the message.
        self._keep_alive = self.parser.should_keep_alive()
        self._done = True

    def _reset(self) -> None:
        self._done = False
        self._skip = False
        self._received = b""
        self._head_at = -1


class UpstreamPool:
    """Idle keep-alive connections to one instance (LIFO: the warmest first)."""

    __slots__ = ("address", "closed", "idle", "max_idle")

    def __init__(self, address: Address, max_idle: int = 512) -> None:
        self.address = address
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.closed = False  # replaced (instance removed or its URL changed): keep nothing

    def __repr__(self) -> str:
        closed = " closed" if self.closed else ""
        return f"<UpstreamPool {self.address.origin} idle={len(self.idle)}/{self.max_idle}{closed}>"

    def acquire_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        a = self.address
        try:
            async with asyncio.timeout(timeout):
                _, proto = await loop.create_connection(
                    lambda: UpstreamConnection(self),
                    a.host,
                    a.port,
                    ssl=_client_ssl() if a.scheme == "https" else None,
                )
        except TimeoutError as e:
            raise UpstreamConnectTimeout("timed out connecting to the instance") from e
        except OSError as e:
            raise UpstreamConnectError(
                f"could not connect to the instance ({e.strerror or type(e).__name__})"
            ) from e
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        if not self.closed and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
