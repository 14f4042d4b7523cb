"""Redis clients built from ``store.url``, for the assignment store and the webhook relay.

URL forms: ``redis://``, ``rediss://``, ``unix://`` through ``Redis.from_url``, and
``redis+sentinel://`` parsed by ``router.redis_url``. Every client has bounded
timeouts and one retry on a dead pooled connection. Callers choose the reply type (the
store decodes strings; the relay keeps bytes so bodies are delivered byte for byte) and
the operation timeout (a blocking reader needs one longer than its ``BLOCK``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from router.redis_url import is_sentinel_url, parse_sentinel_url


class RedisClients:
    """Builds clients for one URL; with Sentinel, every client shares one ``Sentinel``."""

    def __init__(self, url: str, *, connect_timeout: float = 1.0) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._sentinel: Sentinel | None = None

    def client(self, *, op_timeout: float, name: str = "wa-router-webhooks",
               decode_responses: bool = False) -> Redis:
        options: dict[str, Any] = {
            "socket_connect_timeout": self._connect_timeout,
            "socket_timeout": op_timeout,
            # One retry: a pooled connection may have died since its last use.
            "retry": Retry(NoBackoff(), 1),
            "decode_responses": decode_responses,
            "client_name": name,
        }
        if not is_sentinel_url(self._url):
            return Redis.from_url(self._url, **options)
        target = parse_sentinel_url(self._url)
        if self._sentinel is None:
            sentinel_options: dict[str, Any] = {
                "socket_connect_timeout": self._connect_timeout,
                "socket_timeout": self._connect_timeout,
            }
            if target.sentinel_password:
                sentinel_options["password"] = target.sentinel_password
            # Typed through a Callable: whether redis-py annotates Sentinel.__init__ changes
            # between releases, and the call must type-check under either.
            make_sentinel: Callable[..., Sentinel] = Sentinel
            self._sentinel = make_sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)
        return cast(
            Redis,
            self._sentinel.master_for(
                target.service,
                redis_class=Redis,
                db=target.db,
                username=target.username,
                password=target.password,
                **options,
            ),
        )

    async def close(self) -> None:
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                with contextlib.suppress(Exception):
                    await s.aclose()
            self._sentinel = None
