"""Control-plane calls to instances, in the vocabulary of the router: start (restore),
status, stop and list a session, and the generic call behind fan-out. Paths, methods, the
fields read from the answers and the values that mean ready, failed or stopped come from
the live config (``failover.*``, defaults per profile); every call carries the instance's
auth headers (``Instance.auth_headers``: ``X-Api-Key`` and ``apikey``) and goes over the
one transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from router.config.holder import ConfigHolder
from router.errors import UpstreamError
from router.instances import Instance
from router.transport import Transport

NOT_FOUND = "NOT_FOUND"  # the instance does not run the session (404, or no state field)
CONFIRM_CONCURRENCY = 8  # status calls in flight when a list must be confirmed


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def dig(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` in parsed JSON (None when absent); "" is ``data``."""
    if path:
        for key in path.split("."):
            if not isinstance(data, dict):
                return None
            data = data.get(key)
    return data


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

    @property
    def can_stop(self) -> bool:
        """Whether the instances have a call that ends one copy and keeps its auth."""
        return self._config.current.failover.stop is not None

    async def stop(self, inst: Instance, session: str) -> ApiResponse:
        """``failover.stop`` (check ``can_stop`` first: LookupError without one)."""
        cfg = self._config.current
        call = cfg.failover.stop
        if call is None:
            raise LookupError("failover.stop is none: no call ends one copy")
        return await self.request(inst, call.method, call_path(call.path, session),
                                  timeout=cfg.limits.upstream_timeout)

    async def status(self, inst: Instance, session: str) -> str | None:
        """The session's state on ``inst`` (``failover.status.field``): ``NOT_FOUND`` for a
        404 or an answer without the field, None when unknown."""
        cfg = self._config.current
        call = cfg.failover.status
        try:
            resp = await self.request(inst, call.method, call_path(call.path, session),
                                      timeout=cfg.health.timeout * 4)
            if resp.status != 200:
                return NOT_FOUND if resp.status == 404 else None
            data = resp.json()
        except (UpstreamError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        state = dig(data, call.field)
        if state is None:
            return NOT_FOUND  # Evolution API: known to the database, not loaded here
        return state if isinstance(state, str) else None

    def is_ready(self, status: str | None) -> bool:
        return status in self._config.current.failover.status.ready

    def is_failed(self, status: str | None) -> bool:
        """A state from which a start will not reach ready (stop polling, retry later)."""
        return status in self._config.current.failover.status.failed

    async def running(self, inst: Instance) -> list[str] | None:
        """Names of the sessions ``inst`` runs (valid ids, not in ``list.stopped``, and
        with ``list.confirm`` running by the status call), or None when that could not be
        told."""
        cfg = self._config.current
        call = cfg.failover.list
        try:
            resp = await self.request(inst, call.method, call.path,
                                      timeout=cfg.limits.upstream_timeout)
            items = dig(resp.json(), call.items) if resp.status == 200 else None
        except (UpstreamError, ValueError):
            return None
        if not isinstance(items, list):
            return None
        pattern = cfg.sessions.id_pattern
        names: list[str] = []
        for item in items:
            name, state = dig(item, call.name), dig(item, call.state)
            if isinstance(name, str) and pattern.fullmatch(name) and state not in call.stopped:
                names.append(name)
        if not call.confirm or not names:
            return names
        return await self._confirmed(inst, names, call.stopped)

    async def _confirmed(self, inst: Instance, names: list[str],
                         stopped: frozenset[str]) -> list[str] | None:
        """The listed sessions ``inst`` says it runs when asked one by one; None if any
        answer is unknown (a copy that may run must not be taken for none)."""
        gate = asyncio.Semaphore(CONFIRM_CONCURRENCY)

        async def one(name: str) -> str | None:
            async with gate:
                return await self.status(inst, name)

        states = await asyncio.gather(*(one(n) for n in names))
        if any(state is None for state in states):
            return None
        return [n for n, state in zip(names, states, strict=True)
                if state != NOT_FOUND and state not in stopped]
