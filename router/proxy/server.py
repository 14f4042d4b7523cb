"""The proxy port: listening sockets, live client connections, request ids and the
deadline sweeper. A client connection (``connection``) reads requests; each becomes an
``Exchange`` (``exchange``) that routes it and relays the answer over a keep-alive
connection from the instance's pool (``upstream``).

The common case (a known session, an idle pooled connection) runs entirely in protocol
callbacks: no task, no future, no ClientSession. Only placement of a new session, opening
a new upstream connection, fan-out and body-dependent routing spawn a task.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import TYPE_CHECKING

from router.proxy.connection import ClientConnection
from router.routing import Router

if TYPE_CHECKING:
    from router.accesslog import AccessLog
    from router.idempotency.store import KeyStore
    from router.outbox.service import OutboxService

log = logging.getLogger("wa_router.proxy")


class ProxyServer:
    """Listening sockets, live connections, request ids and the deadline sweeper."""

    def __init__(self, router: Router, outbox: OutboxService | None = None,
                 keys: KeyStore | None = None, access: AccessLog | None = None) -> None:
        self.router = router
        self.access = access  # the access log (None: off); swapped on a config reload
        self.outbox = outbox  # answers /outbox/... (None: those paths are proxied as any)
        self.keys = keys  # Idempotency-Key on proxied POST/PATCH (None: the header is forwarded)
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.all_closed = asyncio.Event()  # set when closing and the last connection ends
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._rid_prefix = secrets.token_hex(4) + "-"
        self._rid_counter = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        where = ",".join(
            f"{s.getsockname()[0]}:{s.getsockname()[1]}" for srv in self._servers for s in srv.sockets
        )
        closing = " closing" if self.closing else ""
        return f"<ProxyServer {where or 'not started'} connections={len(self.connections)}{closing}>"

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
