"""Wiring: build a router process from a config, with injectable side effects."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import aiohttp
from aiohttp import web

from router import logs
from router.admin import create_admin_app
from router.alerts import Alerter
from router.config import load_config
from router.config.model import Config
from router.drain import Drainer
from router.errors import ConfigError
from router.events import EventLog
from router.failover import Failover
from router.instance_api import InstanceApi
from router.instances import Fleet, Instance
from router.leader import Leadership
from router.monitor import HealthMonitor
from router.proxy import ProxyServer
from router.reload import Reloads, plan_reload
from router.routing import Router
from router.store import AssignmentStore, MemoryStore
from router.webhooks import WebhookRelay
from router.workerstats import WorkerStats

log = logging.getLogger("wa_router")


def make_store(config: Config) -> AssignmentStore:
    """In memory without ``store.url``; otherwise Redis, shared by every router."""
    if config.store.url is None:
        return MemoryStore()
    from router.store.redis import RedisStore

    return RedisStore(config.store.url.value, config.store.prefix)


class App:
    """One router process: proxy port, admin port, store, fleet."""

    def __init__(
        self,
        config: Config,
        *,
        store: AssignmentStore | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.store = store if store is not None else make_store(config)
        self._http = http
        self._own_http = http is None
        self.fleet = Fleet(config.instances, metrics=config.metrics.enabled)
        self.events = EventLog()
        self.reloads = Reloads()
        self.router: Router | None = None
        self.proxy: ProxyServer | None = None
        self.monitor: HealthMonitor | None = None
        self.failover: Failover | None = None
        self.leadership: Leadership | None = None
        self.relay: WebhookRelay | None = None
        self.drainer: Drainer | None = None
        self.alerter: Alerter | None = None
        self.worker_stats: WorkerStats | None = None
        self._reload_lock = asyncio.Lock()
        self._admin_runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._sighup_tasks: set[asyncio.Task[None]] = set()

    @property
    def proxy_port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    @property
    def admin_port(self) -> int:
        assert self._admin_runner is not None
        port: int = self._admin_runner.addresses[0][1]
        return port

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._sighup_tasks.add(task)
        task.add_done_callback(self._sighup_tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError:
            pass  # already logged and counted
        except Exception:
            log.exception("config reload failed")

    async def reload(self, config: Config | None = None) -> list[str]:
        """Re-read the config file (or take ``config``), validate it whole and apply it in
        one step; returns what changed. ``ConfigError`` with every problem when it is
        invalid or changes what needs a restart: the running config stays."""
        async with self._reload_lock:
            try:
                if config is None:
                    if self.config.source is None:
                        raise ConfigError(["the config was not read from a file: nothing to reload"])
                    config = load_config(self.config.source)
                plan = plan_reload(self.config, config)
                if plan.problems:
                    raise ConfigError(list(plan.problems))
            except ConfigError as e:
                self.reloads.record(False, tuple(e.problems))
                log.error("config reload refused, old config kept: %s", "; ".join(e.problems))
                self.events.emit("config_reload_failed", "config reload refused: "
                                 + "; ".join(e.problems), severity="warning",
                                 data={"problems": e.problems})
                raise
            changes = plan.summary()
            if not plan.unchanged:
                await self._apply(config, plan.removed)
            self.reloads.record(True)
            log.info("config reloaded: %s", ", ".join(changes) or "no change")
            self.events.emit("config_reloaded", "config reloaded: " + (", ".join(changes) or "no change"),
                             data={"changes": changes})
            return changes

    async def _apply(self, config: Config, removed: tuple[str, ...]) -> None:
        """Swap in ``config``. No await before the last assignment, so requests never see
        half of it; the webhook relay's update (which may wait for a removed target's
        deliveries) comes after."""
        old = self.config
        self.config = config
        added = self.fleet.reconfigure(config.instances, metrics=config.metrics.enabled)
        if self.router is not None:
            self.router.reconfigure(config)
        if self.failover is not None:
            self.failover.reconfigure(config)
        if self.monitor is not None:
            self.monitor.config = config
            for inst in added:
                self.monitor.add(inst)
        if self.leadership is not None:
            self.leadership.ttl = config.failover.leader_ttl
        if old.log != config.log:
            logs.setup(config.log.format, config.log.level)
        for name in removed:
            log.info("instance %s removed by reload: draining it before it is dropped", name)
        if self.router is not None:
            self.router.changed.fire()
        if self.drainer is not None:
            self.drainer.kick()
        if self.alerter is not None:
            self.alerter.update(config.alerts)
        if self.relay is not None and old.webhooks != config.webhooks:
            await self.relay.update(config.webhooks)

    async def _admin_reload(self) -> list[str]:
        changes = await self.reload()
        # Worker processes: this one answers; the master passes SIGHUP on to every worker
        # (this one included: the same file again is "no change").
        from router.workers import worker_index

        if worker_index() is not None:
            os.kill(os.getppid(), signal.SIGHUP)
        return changes

    def _instance_dropped(self, inst: Instance) -> None:
        if self.monitor is not None:
            self.monitor.remove(inst.name)

    def _became_leader(self) -> None:
        if self.failover is not None:
            self.failover.became_leader()

    def current_router(self) -> Router:
        assert self.router is not None
        return self.router

    async def start(self, *, reuse_port: bool = False, admin: bool = True, worker: int | None = None) -> None:
        """Start every part; if one fails (a port in use, Redis down), stop the parts
        already running before raising, so the process can exit. ``worker``: this process's
        index under ``listen.workers: N``."""
        try:
            await self._start(reuse_port=reuse_port, admin=admin, worker=worker)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, *, reuse_port: bool, admin: bool, worker: int | None) -> None:
        cfg = self.config
        await self.store.start()
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60)
            )
        api = InstanceApi(self._http, connect_timeout=cfg.limits.upstream_connect_timeout)
        router = self.router = Router(cfg, self.store, self.fleet, api)
        leadership = self.leadership = Leadership(
            self.store, cfg.failover.leader_ttl, self.events, on_gain=self._became_leader
        )
        failover = self.failover = Failover(
            cfg, router, api, self.events, lambda: leadership.is_leader
        )
        monitor = self.monitor = HealthMonitor(
            cfg, self.fleet, self.events,
            on_change=router.changed.fire,
            on_failover_due=failover.instance_failed,
            on_up=failover.instance_up,
        )
        router.on_passive_failure = monitor.passive_failure
        router.on_passive_success = monitor.passive_success
        router.on_not_found = failover.suspect
        self.store.add_listener(lambda session, assignment: router.changed.fire())
        relay = self.relay = WebhookRelay(
            cfg.webhooks,
            redis_url=cfg.store.url.value if cfg.store.url else None,
            prefix=cfg.store.prefix,
            events=self.events,
            # Its own client session: 64 deliveries in flight per target must not starve
            # health probes and restores of connections.
            http=None,
        )
        await relay.start()
        router.relay = relay
        if not relay.durable and cfg.webhooks.targets:
            log.warning(
                "webhooks: no store.url, so accepted webhooks wait in memory: "
                "those not yet delivered are lost if the router stops; set store.url (Redis) "
                "for durable delivery"
            )
        self.drainer = Drainer(router, failover, self.events, lambda: leadership.is_leader,
                               on_dropped=self._instance_dropped)
        self.alerter = Alerter(cfg.alerts, self.events, relay.backlog)
        self.alerter.start()
        if worker is not None and cfg.listen.workers > 1:
            self.worker_stats = WorkerStats(self.store, worker, cfg.listen.workers,
                                            router.stats_sources, lambda: router.held)
            self.worker_stats.start()
        monitor.start()
        leadership.start()
        self.drainer.start()
        self.proxy = ProxyServer(self.router)
        await self.proxy.start(cfg.listen.host, cfg.listen.port, reuse_port=reuse_port)
        if admin:
            self._admin_runner = web.AppRunner(
                create_admin_app(
                    self.current_router, self.events,
                    lambda: self.failover, lambda: self.leadership, lambda: self.relay,
                    self.reloads, lambda: self.drainer, self._admin_reload,
                    lambda: self.worker_stats.peers if self.worker_stats is not None else [],
                ),
                access_log=None,
                handle_signals=False,
            )
            await self._admin_runner.setup()
            site = web.TCPSite(
                self._admin_runner, cfg.admin.host, cfg.admin.port, reuse_port=reuse_port or None
            )
            await site.start()
        log.info(
            "wa-router listening on %s:%d (admin %s:%d), %d instances, store %s",
            cfg.listen.host,
            self.proxy.port,
            cfg.admin.host,
            self.admin_port if admin else 0,
            len(self.fleet),
            "memory" if cfg.store.url is None else "redis",
        )

    async def stop(self) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            if self.proxy is not None:
                await self.proxy.shutdown(self.config.listen.shutdown_timeout)
            if self._admin_runner is not None:
                await self._admin_runner.cleanup()
            if self.drainer is not None:
                await self.drainer.stop()
            if self.alerter is not None:
                await self.alerter.stop()
            if self.worker_stats is not None:
                await self.worker_stats.stop()
            if self.relay is not None:
                await self.relay.stop()
            if self.monitor is not None:
                await self.monitor.stop()
            if self.failover is not None:
                await self.failover.stop()
            if self.leadership is not None:
                await self.leadership.stop()
            await self.fleet.close()
            if self._own_http and self._http is not None:
                await self._http.close()
            await self.store.close()
        finally:
            self._stopped.set()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP must never kill the router (its default action would).
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            loop.remove_signal_handler(signal.SIGHUP)
            await self.stop()


def create_app(
    config: Config,
    *,
    store: AssignmentStore | None = None,
    http: aiohttp.ClientSession | None = None,
) -> App:
    """Build (not start) a router process. Side effects are injectable for tests."""
    return App(config, store=store, http=http)
