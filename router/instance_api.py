"""Control-plane calls to instances, in the vocabulary of the router: start (restore),
status, stop and list a session, and the generic call behind fan-out. Paths, methods and
the ready states come from the live config (``failover.*``); every call carries the
instance's auth headers (``Instance.auth_headers``) and goes over the one transport."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from router.config.holder import ConfigHolder
from router.errors import UpstreamError
from router.instances import Instance
from router.transport import Transport

NOT_RUNNING = frozenset({"STOPPED", "FAILED"})


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call_path(path: str, session: str) -> str:
    """Fill ``{session}`` in a configured instance call, percent-encoded."""
    return path.replace("{session}", quote(session, safe=""))


class InstanceApi:
    """Small requests to instances, with their API key and bounded time."""

    def __init__(self, transport: Transport, config: ConfigHolder) -> None:
        self._transport = transport
        self._config = config

    async def request(
        self,
        instance: Instance,
        method: str,
        path: str,
        *,
        timeout: float,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        max_body: int = 16 * 1024 * 1024,
    ) -> ApiResponse:
        """Raises ``UpstreamError`` (connect error, timeout, too large, broken answer)."""
        url = instance.address.origin + instance.address.base_path + path
        hdrs = {**(headers or {}), **instance.auth_headers}
        data = b""
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            r = await self._transport.request(method, url, data, hdrs, timeout=timeout,
                                              max_body=max_body)
        except UpstreamError as e:
            raise type(e)(f"instance {instance.name}: {e.message}") from e
        return ApiResponse(r.status, r.body)

    # -- the session lifecycle, as configured (failover.restore / status / stop / list) --

    async def start(self, inst: Instance, session: str, timeout: float) -> ApiResponse:
        call = self._config.current.failover.restore
        return await self.request(inst, call.method, call_path(call.path, session), timeout=timeout)

    async def stop(self, inst: Instance, session: str) -> ApiResponse:
        cfg = self._config.current
        call = cfg.failover.stop
        return await self.request(inst, call.method, call_path(call.path, session),
                                  timeout=cfg.limits.upstream_timeout)

    async def status(self, inst: Instance, session: str) -> str | None:
        """The session's status on ``inst``: ``NOT_FOUND`` for a 404, None when unknown."""
        cfg = self._config.current
        call = cfg.failover.status
        try:
            resp = await self.request(inst, call.method, call_path(call.path, session),
                                      timeout=cfg.health.timeout * 4)
            if resp.status != 200:
                return "NOT_FOUND" if resp.status == 404 else None
            data = resp.json()
        except (UpstreamError, ValueError):
            return None
        status = data.get("status") if isinstance(data, dict) else None
        return status if isinstance(status, str) else None

    def is_ready(self, status: str | None) -> bool:
        return status in self._config.current.failover.status.ready

    async def running(self, inst: Instance) -> list[str] | None:
        """Names of the sessions ``inst`` runs (valid ids, not stopped or failed), or None
        when it could not be listed."""
        cfg = self._config.current
        call = cfg.failover.list
        try:
            resp = await self.request(inst, call.method, call.path,
                                      timeout=cfg.limits.upstream_timeout)
            items = resp.json() if resp.status == 200 else None
        except (UpstreamError, ValueError):
            return None
        if not isinstance(items, list):
            return None
        pattern = cfg.sessions.id_pattern
        names: list[str] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            name, status = item.get("name"), item.get("status")
            if isinstance(name, str) and pattern.fullmatch(name) and status not in NOT_RUNNING:
                names.append(name)
        return names
