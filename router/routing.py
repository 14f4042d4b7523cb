"""Where does a request go: session -> assignment -> instance, placing new sessions.

The hot path uses ``Router.cached_instance`` (no I/O, no awaits). Only a session seen for
the first time, or a cache miss, takes the async ``Router.assign`` path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from router.clock import Clock
from router.config.holder import ConfigHolder
from router.config.model import Config
from router.errors import (
    NoInstance,
    RouterError,
    SessionMoving,
    UpstreamError,
)
from router.instances import Fleet, Instance
from router.pulse import Pulse
from router.sessions import SessionExtractor
from router.stats import RequestStats, new_stats
from router.store.base import Assignment, AssignmentStore

if TYPE_CHECKING:
    from router.instance_api import InstanceApi
    from router.placer import Placer
    from router.webhooks import WebhookRelay


class PassiveReports(Protocol):
    """Where the data path reports each answer's health (the health monitor)."""

    def passive_failure(self, inst: Instance, connect_error: bool) -> None: ...

    def passive_success(self, inst: Instance) -> None: ...

log = logging.getLogger("wa_router.routing")

MAX_STATUSES = 200_000


class Router:
    """Routing decisions shared by every connection of one router process."""

    def __init__(
        self,
        config: ConfigHolder,
        store: AssignmentStore,
        fleet: Fleet,
        placer: Placer,
        changed: Pulse,
        clock: Clock,
        *,
        api: InstanceApi | None = None,
        health: PassiveReports | None = None,
        on_not_found: Callable[[str], None] = lambda session: None,
        relay: WebhookRelay | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.fleet = fleet
        self.placer = placer
        self.api = api
        self.changed = changed
        self.clock = clock
        self._health = health
        self._on_not_found = on_not_found
        self.relay = relay  # webhooks from instances (None: the path is proxied as usual)
        self._placing: dict[str, asyncio.Future[Assignment]] = {}
        self.held = 0  # requests waiting for their session to become routable
        # Session statuses learned from instances' session.status webhooks (bounded).
        self.statuses: dict[str, str] = {}
        self._derive(None, config.current)
        config.subscribe(self._derive)

    def __repr__(self) -> str:
        return f"<Router {len(self.fleet)} instances, held={self.held}, placing={len(self._placing)}>"

    def _derive(self, old: Config | None, config: Config) -> None:
        """What requests read on the hot path, rebuilt from a (re)loaded config: requests
        that start after this see it whole."""
        self.extractor = SessionExtractor(config.sessions, config.profile)
        self.fan_out_routes = frozenset(config.sessions.fan_out)
        self.max_held = config.failover.max_held_requests
        self.passive_statuses = config.passive.statuses
        if old is None or old.metrics.enabled != config.metrics.enabled:
            # Answers the router gives itself (errors, health, webhooks, fan-out).
            self.own_stats = new_stats(config.metrics.enabled)
        # The holder's config, as a plain attribute: the data path reads it per request.
        self.config = config

    def stats_sources(self) -> list[tuple[str, RequestStats]]:
        """Request counters by instance name, plus "router" for the router's own answers."""
        return [*((i.name, i.stats) for i in self.fleet), ("router", self.own_stats)]

    def record_status(self, session: str, status: str) -> None:
        if len(self.statuses) >= MAX_STATUSES and session not in self.statuses:
            self.statuses.pop(next(iter(self.statuses)))  # forget the oldest
        self.statuses[session] = status

    def passive_failure(self, inst: Instance, *, connect_error: bool) -> None:
        if self._health is not None:
            self._health.passive_failure(inst, connect_error)

    def passive_success(self, inst: Instance) -> None:
        if self._health is not None:
            self._health.passive_success(inst)

    def not_found(self, session: str) -> None:
        self._on_not_found(session)

    # -- hot path ------------------------------------------------------------------------

    def routable_instance(self, session: str) -> Instance | None:
        """The instance to send to now, or None when the session is unknown here, moving,
        or on an instance that is not healthy (the caller then takes ``routable``)."""
        a = self.store.cached(session)
        if a is None or a.moving:
            return None
        inst = self.fleet.by_name.get(a.instance)
        if inst is None or not inst.healthy:
            return None
        return inst

    async def routable(self, session: str, deadline: float) -> Instance:
        """Wait (hold) until the session can be sent somewhere, placing it if it is new.

        Raises ``SessionMoving`` at ``deadline`` (``clock`` time: the loop's in production)."""
        counted = False
        try:
            while True:
                a = self.store.cached(session)
                if a is None:
                    a = await self.assign(session)
                if not a.moving:
                    inst = self.fleet.by_name.get(a.instance)
                    if inst is not None and inst.healthy:
                        return inst
                if not counted:
                    if self.held >= self.max_held:
                        raise SessionMoving("too many held requests; retry later")
                    self.held += 1
                    counted = True
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    raise SessionMoving("the session is moving to another instance; retry later")
                await self.changed.wait(remaining)
        finally:
            if counted:
                self.held -= 1

    def session_of(self, method: str, path: str, query: str, headers: Mapping[str, str],
                   body: bytes, doc: object = None) -> str | None:
        """The session a request names (with its body at hand, and ``doc``, that body as
        JSON if already parsed), as the proxy would find it; ``InvalidSessionId`` for a
        malformed one."""
        found = self.extractor.extract(method, path, query, headers, body, doc)
        return found if isinstance(found, str) else None

    def session_state(self, session: str) -> str:
        """What the router knows of a session beyond its assignment: ``moving`` while it
        is being restored elsewhere, else the last status its instance reported
        (``session.status`` webhooks), else ``assigned``."""
        a = self.store.cached(session)
        if a is not None and a.moving:
            return "moving"
        return self.statuses.get(session, "assigned")

    # -- placement -----------------------------------------------------------------------

    async def assign(self, session: str) -> Assignment:
        """The session's assignment, placing it if it has none. Concurrent callers for one
        session in this process share one placement; across processes the store's
        create-if-absent decides."""
        current = await self.store.get(session)
        if current is not None:
            return current
        pending = self._placing.get(session)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Assignment] = asyncio.get_running_loop().create_future()
        self._placing[session] = fut
        try:
            assignment = await self.placer.place_new(session)
            fut.set_result(assignment)
            return assignment
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._placing[session]

    # -- fan-out -------------------------------------------------------------------------

    async def fan_out(
        self, method: str, target: str, headers: Mapping[str, str]
    ) -> tuple[bytes, list[str], list[str]]:
        """Ask every healthy instance and merge their JSON lists.

        Returns (merged JSON body, instances that answered, instances that failed)."""
        if self.api is None:
            raise NoInstance("fan-out is not available")
        targets = self.fleet.healthy()
        if not targets:
            raise NoInstance("no healthy instance")
        timeout = self.config.limits.upstream_timeout
        results = await asyncio.gather(
            *(self._list_one(i, method, target, headers, timeout) for i in targets),
            return_exceptions=True,
        )
        merged: list[object] = []
        answered: list[str] = []
        failed: list[str] = []
        for inst, result in zip(targets, results, strict=True):
            if isinstance(result, list):
                merged.extend(result)
                answered.append(inst.name)
            else:
                failed.append(inst.name)
                if isinstance(result, BaseException) and not isinstance(result, RouterError):
                    log.warning("fan-out to %s failed: %r", inst.name, result)
        if not answered:
            raise UpstreamError("no instance answered the fan-out request")
        return json.dumps(merged, separators=(",", ":")).encode(), answered, failed

    async def _list_one(
        self, inst: Instance, method: str, target: str, headers: Mapping[str, str], timeout: float
    ) -> list[object]:
        assert self.api is not None
        resp = await self.api.request(inst, method, target, timeout=timeout, headers=dict(headers))
        if resp.status != 200:
            raise UpstreamError(f"instance {inst.name} answered {resp.status}")
        try:
            data = resp.json()
        except ValueError as e:
            raise UpstreamError(f"instance {inst.name} answered invalid JSON") from e
        if not isinstance(data, list):
            raise UpstreamError(f"instance {inst.name} did not answer a JSON list")
        return data
