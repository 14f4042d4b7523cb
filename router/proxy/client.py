"""A lean HTTP/1.1 client on the proxy's llhttp keep-alive pools, for small requests whose
answer is only a status: webhook deliveries and health probes.

aiohttp's client costs about twice a webhook accept per delivery (py-spy,
bench/webhook_bench.py) and most of a router's idle CPU when it probes 200 instances a
second. This reuses the data path's ``UpstreamPool``: one parser per connection, pooled
keep-alive, no per-request session; the body of the answer is dropped as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib

from router.errors import UpstreamError
from router.instances import Address
from router.proxy.upstream import UpstreamConnection, UpstreamPool


class _Answer:
    """The ``UpstreamListener`` of one request: keeps the status, drops the body."""

    __slots__ = ("fut", "status")

    def __init__(self, fut: asyncio.Future[tuple[int, bool]]) -> None:
        self.fut = fut
        self.status = 0

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      body: bool) -> None:
        self.status = status

    def upstream_body(self, data: bytes) -> None:
        pass

    def upstream_flush(self) -> None:
        pass

    def upstream_done(self, keep_alive: bool) -> None:
        if not self.fut.done():
            self.fut.set_result((self.status, keep_alive))

    def upstream_upgraded(self, rest: bytes) -> None:
        self.upstream_failed(UpstreamError("unexpected protocol upgrade"))

    def upstream_failed(self, err: UpstreamError) -> None:
        if not self.fut.done():
            self.fut.set_exception(err)

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


class LeanHttp:
    """Requests to URLs over pooled keep-alive connections; returns the status."""

    def __init__(self, connect_timeout: float = 2.0) -> None:
        self.connect_timeout = connect_timeout
        self._targets: dict[str, tuple[UpstreamPool, bytes, bytes]] = {}

    def _target(self, url: str) -> tuple[UpstreamPool, bytes, bytes]:
        t = self._targets.get(url)
        if t is None:
            address = Address.parse(url)
            rest = url.split("://", 1)[-1]
            path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
            t = (UpstreamPool(address, max_idle=128), path.encode(),
                 address.netloc.encode("idna"))
            self._targets[url] = t
        return t

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        return await self.request("POST", url, body, headers, timeout)

    async def request(self, method: str, url: str, body: bytes, headers: dict[str, str],
                      timeout: float) -> int:
        """The answer's status; raises ``UpstreamError`` (or ``TimeoutError``) without one."""
        pool, path, host = self._target(url)
        head = [method.encode(), b" ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        for name, value in headers.items():
            head += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        head += [b"\r\n", body]
        request = b"".join(head)
        async with asyncio.timeout(timeout):
            for _ in range(2):
                conn = pool.acquire_idle()
                reused = conn is not None
                if conn is None:
                    conn = await pool.connect(self.connect_timeout)
                try:
                    return await self._exchange(conn, request)
                except UpstreamError:
                    if not reused:
                        raise
                    # The target closed a pooled connection as we reused it: once more, fresh.
        raise UpstreamError("the target closed the connection")  # pragma: no cover

    @staticmethod
    async def _exchange(conn: UpstreamConnection, request: bytes) -> int:
        fut: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        conn.bind(_Answer(fut), head_request=request.startswith(b"HEAD "))
        try:
            conn.write(request)
            status, keep_alive = await fut
        except BaseException:
            conn.abort()
            raise
        conn.release(keep_alive)
        return status

    def forget(self, url: str) -> None:
        """Close the pool of a URL no longer used (an instance removed by a reload)."""
        t = self._targets.pop(url, None)
        if t is not None:
            t[0].close()

    def close(self) -> None:
        for pool, _, _ in self._targets.values():
            pool.close()
        self._targets.clear()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
