"""Control-plane calls to instances (fan-out, and later health, restore, stop, list).

These use aiohttp's client: they are few and not on the request hot path, so a proven,
full-featured client beats a lean one here. The data path has its own pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from router.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from router.instances import Instance


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class InstanceApi:
    """Small requests to instances, with their API key and bounded time."""

    def __init__(self, session: aiohttp.ClientSession, *, connect_timeout: float) -> None:
        self._session = session
        self._connect_timeout = connect_timeout

    async def request(
        self,
        instance: Instance,
        method: str,
        path: str,
        *,
        timeout: float,
        body: Any = None,
        headers: dict[str, str] | None = None,
        max_body: int = 16 * 1024 * 1024,
    ) -> ApiResponse:
        url = instance.address.origin + instance.address.base_path + path
        hdrs = dict(headers or {})
        if instance.config.api_key:
            hdrs["X-Api-Key"] = instance.config.api_key.value
        t = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, self._connect_timeout))
        try:
            async with self._session.request(
                method, url, json=body, headers=hdrs, timeout=t, allow_redirects=False
            ) as resp:
                data = await resp.content.read(max_body + 1)
                if len(data) > max_body:
                    raise UpstreamError(f"instance {instance.name} answered more than {max_body} bytes")
                return ApiResponse(resp.status, data)
        except aiohttp.ClientConnectorError as e:
            raise UpstreamConnectError(f"instance {instance.name} refused the connection") from e
        except TimeoutError as e:
            raise UpstreamTimeout(f"instance {instance.name} did not answer in time") from e
        except aiohttp.ClientError as e:
            raise UpstreamError(f"instance {instance.name}: {type(e).__name__}") from e


def call_path(path: str, session: str) -> str:
    """Fill ``{session}`` in a configured instance call, percent-encoded."""
    return path.replace("{session}", quote(session, safe=""))
