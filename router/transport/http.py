"""A lean HTTP/1.1 client on llhttp keep-alive pools: every control-plane call goes through
it (probes, restores, status, stops, lists, fan-out, webhook deliveries, alerts).

aiohttp's client costs about twice a webhook accept per delivery (py-spy,
bench/webhook_bench.py) and most of a router's idle CPU when it probes 200 instances a
second. This reuses the data path's connection class (``UpstreamPool``, one llhttp parser
per connection, pooled keep-alive, TLS for https): no per-request session. Failures come
out as one family, ``UpstreamError``: ``UpstreamConnectError`` / ``UpstreamConnectTimeout``
(never reached the target), ``UpstreamTimeout`` (no answer in time), ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from router.errors import UpstreamError, UpstreamTimeout
from router.transport.address import Address
from router.transport.upstream import UpstreamConnection, UpstreamPool


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""


# Below Node.js' default keepAliveTimeout (5 s), so the instance rarely closes a connection
# just as it is reused (a reused connection that fails is retried once anyway).
IDLE_TIMEOUT = 4.0
ONCE_IDLE = 1.0  # see ``HttpTransport.request(once=True)``
EXPIRE_EVERY = 1.0  # idle connections past IDLE_TIMEOUT are looked for this often


class _Answer:
    """The ``UpstreamListener`` of one request: keeps the status and up to ``limit`` bytes
    of the body (``limit`` 0: drops it as it arrives)."""

    __slots__ = ("body", "fut", "limit", "size", "status")

    def __init__(self, fut: asyncio.Future[tuple[Response, bool]], limit: int) -> None:
        self.fut = fut
        self.status = 0
        self.limit = limit
        self.size = 0
        self.body: list[bytes] = []

    def upstream_head(self, status: int, head: bytes, body: bool) -> None:
        self.status = status

    def upstream_body(self, data: bytes) -> None:
        if self.limit:
            self.size += len(data)
            if self.size > self.limit:
                self.upstream_failed(UpstreamError(f"the answer is larger than {self.limit} bytes"))
                return
            self.body.append(data)

    def upstream_flush(self) -> None:
        pass

    def upstream_done(self, keep_alive: bool) -> None:
        if not self.fut.done():
            self.fut.set_result((Response(self.status, b"".join(self.body)), keep_alive))

    def upstream_upgraded(self, rest: bytes) -> None:
        self.upstream_failed(UpstreamError("unexpected protocol upgrade"))

    def upstream_failed(self, err: UpstreamError) -> None:
        if not self.fut.done():
            self.fut.set_exception(err)

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


class Transport(Protocol):
    """What the control plane needs of an HTTP client (``HttpTransport``; fakes in tests)."""

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, *, timeout: float,
                      max_body: int = 0, once: bool = False) -> Response: ...

    def forget(self, origin: str) -> None: ...

    def close(self) -> None: ...


class HttpTransport:
    """Requests to URLs over pooled keep-alive connections, one pool per origin."""

    def __init__(self, connect_timeout: Callable[[], float] = lambda: 2.0,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        # A callable: the live config's value at each connect (a reload reaches it).
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._pools: dict[str, UpstreamPool] = {}
        self._idle_since: dict[UpstreamConnection, float] = {}
        self._expire_at = 0.0

    def __repr__(self) -> str:
        return f"<HttpTransport {len(self._pools)} origins>"

    def _pool(self, address: Address) -> UpstreamPool:
        key = address.origin
        pool = self._pools.get(key)
        if pool is None or pool.closed:
            pool = self._pools[key] = UpstreamPool(address, max_idle=128)
        return pool

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, *, timeout: float,
                      max_body: int = 0, once: bool = False) -> Response:
        """Send one request; the answer's status and (up to ``max_body`` bytes) body.
        Raises an ``UpstreamError`` without an answer: ``reached_instance`` False only when
        it provably was not sent.

        ``once``: a request that must never be sent twice (a WhatsApp message). A pooled
        connection that fails as it is reused is normally tried once more on a new one (the
        target closed it while idle); for ``once`` that cannot be told from a target that
        took the request and died, so it is never retried, and only connections idle for
        at most ``ONCE_IDLE`` seconds are reused (the target cannot have timed them out)."""
        address = Address.parse(url)
        rest = url.split("://", 1)[-1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        head = [method.encode(), b" ", path.encode(), b" HTTP/1.1\r\nHost: ",
                address.netloc.encode("idna"), b"\r\n"]
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        for name, value in (headers or {}).items():
            head += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        head += [b"\r\n", body]
        request = b"".join(head)
        pool = self._pool(address)
        if pool.idle and (now := time.monotonic()) >= self._expire_at:
            self._expire_at = now + EXPIRE_EVERY  # a scan per second, not per request
            for each in self._pools.values():
                self._expire(each)
        try:
            async with asyncio.timeout(timeout):
                for _ in range(1 if once else 2):
                    conn = self._acquire(pool, ONCE_IDLE if once else None)
                    reused = conn is not None
                    if conn is None:
                        conn = await pool.connect(min(timeout, self._connect_timeout()))
                    try:
                        return await self._exchange(conn, request, max_body)
                    except UpstreamError:
                        if not reused:
                            raise
                        # The target closed a pooled connection as we reused it: once more.
        except TimeoutError as e:
            raise UpstreamTimeout(f"no answer within {timeout:g}s") from e
        raise UpstreamError("the target closed the connection")  # pragma: no cover

    async def _exchange(self, conn: UpstreamConnection, request: bytes, max_body: int) -> Response:
        fut: asyncio.Future[tuple[Response, bool]] = asyncio.get_running_loop().create_future()
        conn.bind(_Answer(fut, max_body), head_request=request.startswith(b"HEAD "))
        try:
            conn.write(request)
            response, keep_alive = await fut
        except BaseException:
            conn.abort()
            raise
        conn.release(keep_alive)
        if keep_alive:
            self._idle_since[conn] = time.monotonic()
        return response

    def _acquire(self, pool: UpstreamPool, max_idle: float | None) -> UpstreamConnection | None:
        """The warmest idle connection (the pool's own choice), forgetting its idle time;
        one idle longer than ``max_idle`` is closed instead."""
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()
            since = self._idle_since.pop(conn, now)
            if conn.closed:
                continue
            if max_idle is not None and now - since > max_idle:
                conn.close()
                continue
            return conn
        return None

    def _expire(self, pool: UpstreamPool) -> None:
        """Close connections idle longer than ``idle_timeout``: a burst (fan-out, a mass
        restore) must not keep its connections, and their descriptors, for ever."""
        now = time.monotonic()
        keep: list[UpstreamConnection] = []
        for conn in pool.idle:
            since = self._idle_since.get(conn)
            if conn.closed or (since is not None and now - since > self._idle_timeout):
                self._idle_since.pop(conn, None)
                conn.close()
            else:
                keep.append(conn)
        pool.idle[:] = keep

    def forget(self, origin: str) -> None:
        """Close the pool of an origin no longer used (an instance removed or moved)."""
        pool = self._pools.pop(origin, None)
        if pool is not None:
            for conn in pool.idle:
                self._idle_since.pop(conn, None)
            pool.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._idle_since.clear()
