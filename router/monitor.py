"""Active health probes and passive reports, applied through the pure ``router.health``
decisions. This is the thin async layer: it probes, it applies, it tells others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from router import health
from router.clock import Clock
from router.config.holder import ConfigHolder
from router.errors import UpstreamError
from router.events import EventLog
from router.instances import Fleet, Instance
from router.tasks import Tasks
from router.transport import Transport

log = logging.getLogger("wa_router.health")

TICK = 0.1  # seconds between ejection-expiry / failover-due checks


class HealthMonitor:
    def __init__(
        self,
        config: ConfigHolder,
        fleet: Fleet,
        events: EventLog,
        transport: Transport,
        clock: Clock,
        *,
        on_change: Callable[[], None],
        on_failover_due: Callable[[Instance], None],
        on_up: Callable[[Instance], None],
    ) -> None:
        self._config = config
        self.fleet = fleet
        self.events = events
        self._on_change = on_change
        self._on_failover_due = on_failover_due
        self._on_up = on_up
        self._wake: dict[str, asyncio.Event] = {}
        self.tasks = Tasks("health")
        # Probes go over lean keep-alive connections (200 instances = 200 probes a second:
        # aiohttp's client made that most of an idle router's CPU).
        self._http = transport
        self._clock = clock

    def __repr__(self) -> str:
        down = [i.name for i in self.fleet if not i.healthy]
        return f"<HealthMonitor {len(self._wake)} probed, down={down}>"

    def start(self) -> None:
        for inst in self.fleet:
            self.add(inst)
        self.tasks.spawn(self._tick_loop(), name="health-tick")

    def add(self, inst: Instance) -> None:
        """Start checking an instance (at start, or added by a reload)."""
        self._wake[inst.name] = asyncio.Event()
        self.tasks.spawn(self._probe_loop(inst), key=inst.name, name=f"probe-{inst.name}")

    def remove(self, inst: Instance) -> None:
        """Stop checking an instance a reload removed (and the fleet dropped)."""
        self.tasks.cancel(inst.name)
        self._wake.pop(inst.name, None)
        self._http.forget(inst.address.origin)

    async def stop(self) -> None:
        await self.tasks.stop()

    def now(self) -> float:
        return self._clock.now()

    # -- passive (called from the data path: must stay cheap) ---------------------------

    def passive_failure(self, inst: Instance, connect_error: bool) -> None:
        # Everything out of service counts: a crashed instance plus an ejected one could
        # otherwise leave no instance at all (restore load makes survivors fail a little).
        ejected = health.out_of_service(i.health for i in self.fleet)
        new, actions = health.on_passive_failure(
            inst.health, self.now(), self._config.current.passive,
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
            cfg = self._config.current.health  # each round: a reload may change it
            new, actions = health.on_probe(inst.health, ok, self.now(), cfg)
            self._apply(inst, new, actions)
            wake.clear()
            await self._clock.wait(wake.wait(), cfg.interval)

    async def _probe(self, inst: Instance) -> bool:
        cfg = self._config.current.health
        url = inst.address.origin + inst.address.base_path + cfg.path
        try:
            r = await self._http.request("GET", url, b"", inst.auth_headers, timeout=cfg.timeout)
        except UpstreamError:
            return False
        except Exception:
            log.exception("health probe of %s failed unexpectedly", inst.name)
            return False
        return 200 <= r.status < 300

    async def _tick_loop(self) -> None:
        while True:
            await self._clock.sleep(TICK)
            grace = self._config.current.failover.grace  # read each time: a reload may change it
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
