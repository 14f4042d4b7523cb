"""Active health probes and passive reports, applied through the pure ``router.health``
decisions. This is the thin async layer: it probes, it applies, it tells others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from router import health
from router.config.model import Config
from router.errors import UpstreamError
from router.events import EventLog
from router.instances import Fleet, Instance
from router.proxy.client import LeanHttp

log = logging.getLogger("wa_router.health")

TICK = 0.1  # seconds between ejection-expiry / failover-due checks


class HealthMonitor:
    def __init__(
        self,
        config: Config,
        fleet: Fleet,
        events: EventLog,
        *,
        on_change: Callable[[], None],
        on_failover_due: Callable[[Instance], None],
        on_up: Callable[[Instance], None],
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.events = events
        self._on_change = on_change
        self._on_failover_due = on_failover_due
        self._on_up = on_up
        self._wake: dict[str, asyncio.Event] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        # Probes go over lean keep-alive connections (200 instances = 200 probes a second:
        # aiohttp's client made that most of an idle router's CPU).
        self._http = LeanHttp(connect_timeout=config.limits.upstream_connect_timeout)
        self._probe_urls: dict[str, str] = {}
        self._tick: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for inst in self.fleet:
            self.add(inst)
        self._tick = self._loop.create_task(self._tick_loop())

    def add(self, inst: Instance) -> None:
        """Start checking an instance (at start, or added by a reload)."""
        assert self._loop is not None
        self._wake[inst.name] = asyncio.Event()
        self._probes[inst.name] = self._loop.create_task(self._probe_loop(inst))

    def remove(self, name: str) -> None:
        """Stop checking an instance a reload removed (and the fleet dropped)."""
        task = self._probes.pop(name, None)
        self._wake.pop(name, None)
        if task is not None:
            task.cancel()
        url = self._probe_urls.pop(name, None)
        if url is not None:
            self._http.forget(url)

    async def stop(self) -> None:
        tasks = [*self._probes.values(), *([self._tick] if self._tick else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._probes.clear()
        self._tick = None
        self._http.close()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # -- passive (called from the data path: must stay cheap) ---------------------------

    def passive_failure(self, inst: Instance, connect_error: bool) -> None:
        # Everything out of service counts: a crashed instance plus an ejected one could
        # otherwise leave no instance at all (restore load makes survivors fail a little).
        ejected = health.out_of_service(i.health for i in self.fleet)
        new, actions = health.on_passive_failure(
            inst.health, self.now(), self.config.passive,
            ejected_count=ejected, total=len(self.fleet), connect_error=connect_error,
        )
        self._apply(inst, new, actions)

    def passive_success(self, inst: Instance) -> None:
        inst.health = health.on_passive_success(inst.health)

    # -- active --------------------------------------------------------------------------

    async def _probe_loop(self, inst: Instance) -> None:
        wake = self._wake[inst.name]
        while True:
            ok = await self._probe(inst)
            cfg = self.config.health  # each round: a reload may change it
            new, actions = health.on_probe(inst.health, ok, self.now(), cfg)
            self._apply(inst, new, actions)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), cfg.interval)

    async def _probe(self, inst: Instance) -> bool:
        cfg = self.config.health
        url = inst.address.origin + inst.address.base_path + cfg.path
        old = self._probe_urls.get(inst.name)
        if old != url:  # first probe, or a reload changed the address or the path
            if old is not None:
                self._http.forget(old)
            self._probe_urls[inst.name] = url
        key = inst.config.api_key.value if inst.config.api_key else ""
        headers = {"X-Api-Key": key, "apikey": key} if key else {}
        try:
            status = await self._http.request("GET", url, b"", headers, cfg.timeout)
        except (UpstreamError, TimeoutError):
            return False
        except Exception:
            log.exception("health probe of %s failed unexpectedly", inst.name)
            return False
        return 200 <= status < 300

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            grace = self.config.failover.grace  # read each time: a reload may change it
            now = self.now()
            for inst in self.fleet:
                if inst.health.status is not health.Status.HEALTHY:
                    new, actions = health.on_tick(inst.health, now, grace)
                    if new is not inst.health or actions:
                        self._apply(inst, new, actions)

    # -- applying decisions --------------------------------------------------------------

    def _apply(self, inst: Instance, new: health.InstanceHealth, actions: list[health.Action]) -> None:
        was_healthy = inst.healthy
        inst.health = new
        inst.healthy = new.status is health.Status.HEALTHY
        for action in actions:
            if isinstance(action, health.MarkDown):
                self.events.emit("instance_down", f"instance {inst.name} is down: {action.reason}",
                                 instance=inst.name, severity="critical")
            elif isinstance(action, health.MarkUp):
                self.events.emit("instance_up", f"instance {inst.name} is up", instance=inst.name)
            elif isinstance(action, health.Eject):
                self.events.emit(
                    "instance_ejected",
                    f"instance {inst.name} ejected for {action.until - self.now():.1f}s: {action.reason}",
                    instance=inst.name, severity="warning",
                )
            elif isinstance(action, health.ProbeNow):
                wake = self._wake.get(inst.name)
                if wake is not None:
                    wake.set()
            elif isinstance(action, health.StartFailover):
                self._on_failover_due(inst)
            elif isinstance(action, health.Rediscover):
                self._on_up(inst)
        if was_healthy != inst.healthy:
            self._on_change()
