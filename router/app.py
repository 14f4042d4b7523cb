"""Wiring: ``create_app`` builds every component of a router process, whole, from a config
and the side effects it is given (store, transport, clock). ``App.start`` starts them in
order and ``App.stop`` stops them in reverse (one ``AsyncExitStack``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiohttp import web

from router import accesslog, build, logs
from router.accesslog import AccessLog
from router.admin import create_admin_app
from router.agent.fencing import AgentSource, Fencing, RedisAgents
from router.alerts import Alerter
from router.clock import Clock, LoopClock
from router.components import Components
from router.config import load_config
from router.config.holder import ConfigHolder
from router.config.model import Config
from router.drain import Drainer
from router.errors import ConfigError
from router.events import EventLog
from router.failover import Failover
from router.idempotency.redis_store import RedisKeys
from router.idempotency.store import KeyStore, MemoryKeys
from router.instance_api import InstanceApi
from router.instances import Fleet
from router.leader import Leadership
from router.monitor import HealthMonitor
from router.moves import Mover
from router.outbox.dispatcher import Dispatcher
from router.outbox.events import OutboxEvents
from router.outbox.redis_store import RedisOutbox
from router.outbox.service import OutboxService
from router.outbox.store import MemoryOutbox, OutboxStore
from router.placer import Placer
from router.proxy import ProxyServer
from router.pulse import Pulse
from router.reload import Reloads, plan_reload
from router.routing import Router
from router.store import AssignmentStore, MemoryStore
from router.store.redis_client import RedisClients
from router.tasks import Tasks
from router.transport import HttpTransport, Transport
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
    """One router process: proxy port, admin port, store, fleet, and the control plane."""

    def __init__(self, config: Config, *, store: AssignmentStore | None = None,
                 transport: Transport | None = None, clock: Clock | None = None,
                 worker: int | None = None, agents: AgentSource | None = None) -> None:
        holder = self.config = ConfigHolder(config)
        self.clock = clock or LoopClock()
        self.store = store if store is not None else make_store(config)
        self.transport = transport or HttpTransport(
            lambda: holder.current.limits.upstream_connect_timeout)
        self.worker = worker
        self.access = _open_access(config)
        self.events = EventLog()
        self.reloads = Reloads()
        self.fleet = Fleet(config.instances, metrics=config.metrics.enabled)
        self.changed = Pulse(self.clock)
        self.api = InstanceApi(self.transport, holder)
        self.placer = Placer(holder, self.store, self.fleet)
        self.leadership = Leadership(self.store, holder, self.events, self.clock,
                                     on_gain=self._became_leader)
        is_leader = lambda: self.leadership.is_leader  # noqa: E731
        self.mover = Mover(holder, self.store, self.fleet, self.placer, self.api, self.events,
                           self.changed, self.clock, is_leader)
        if agents is None and config.store.url is not None:
            from router.store.redis import RedisStore

            if isinstance(self.store, RedisStore):
                agents = RedisAgents(self.store.commands, config.store.prefix)
        self.fencing = Fencing(agents, holder, self.events, self.clock,
                               lambda: (i.name for i in self.fleet))
        self.failover = Failover(self.store, self.fleet, self.mover, self.events, self.changed,
                                 self.clock, is_leader, self.fencing)
        self.monitor = HealthMonitor(
            holder, self.fleet, self.events, self.transport, self.clock,
            on_change=self.changed.fire,
            on_failover_due=self.failover.instance_failed,
            on_up=self.failover.instance_up,
        )
        self.relay = WebhookRelay(
            config.webhooks,
            redis_url=config.store.url.value if config.store.url else None,
            prefix=config.store.prefix,
            events=self.events,
            http=self.transport,
        )
        self.router = Router(holder, self.store, self.fleet, self.placer, self.changed, self.clock,
                             api=self.api, health=self.monitor,
                             on_not_found=self.failover.suspect, relay=self.relay)
        self.drainer = Drainer(holder, self.store, self.fleet, self.mover, self.events,
                               self.changed, self.clock, is_leader, on_dropped=self.monitor.remove)
        self.alerter = Alerter(holder, self.events, self.transport, self.clock, self.relay.backlog)
        self.worker_stats = WorkerStats(self.store, worker or 0, config.listen.workers,
                                        self.router.stats_sources, lambda: self.router.held,
                                        self.clock)
        self.outbox_store: OutboxStore = (
            MemoryOutbox() if config.store.url is None
            else RedisOutbox(config.store.url.value, config.store.prefix))
        self.outbox_events = OutboxEvents(self.relay)
        self.dispatcher = Dispatcher(holder, self.outbox_store, self.router, self.transport,
                                     self.clock, on_change=self.outbox_events.message,
                                     on_campaign=self.outbox_events.campaign,
                                     events=self.events, access=self.access)
        self.tracker = self.dispatcher.tracker
        self.outbox = OutboxService(holder, self.outbox_store, self.dispatcher, self.clock,
                                    self.router.session_of)
        self.keys: KeyStore | None = None
        if config.listen.idempotency_keys:
            self.keys = (MemoryKeys(self.clock) if config.store.url is None
                         else RedisKeys(RedisClients(config.store.url.value), config.store.prefix))
        self.proxy = ProxyServer(self.router, self.outbox if config.outbox.enabled else None,
                                 self.keys, self.access)
        self.components = Components(
            config=holder, router=self.router, events=self.events, mover=self.mover,
            failover=self.failover, drainer=self.drainer, leadership=self.leadership,
            relay=self.relay, outbox=self.outbox, reloads=self.reloads, reload=self._admin_reload,
            peers=lambda: self.worker_stats.peers if self._shares_stats else [],
        )
        self._reload_lock = asyncio.Lock()
        self._signals = Tasks("signals")
        self._admin_runner: web.AppRunner | None = None  # only worker 0 serves the admin port
        self._stack = contextlib.AsyncExitStack()
        self._stopped = asyncio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return (f"<App {len(self.fleet)} instances, store {type(self.store).__name__}, "
                f"leader={self.leadership.is_leader}>")

    @property
    def _shares_stats(self) -> bool:
        return self.worker is not None and self.config.current.listen.workers > 1

    @property
    def proxy_port(self) -> int:
        return self.proxy.port

    @property
    def admin_port(self) -> int:
        assert self._admin_runner is not None
        port: int = self._admin_runner.addresses[0][1]
        return port

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, reuse_port: bool = False, admin: bool = True) -> None:
        """Start every part in order; if one fails (a port in use, Redis down), stop the
        parts already running before raising, so the process can exit."""
        try:
            await self._start(reuse_port=reuse_port, admin=admin)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, *, reuse_port: bool, admin: bool) -> None:
        cfg = self.config.current
        stack = self._stack
        stack.callback(self._close_access)  # last: after the proxy's and outbox's last lines
        await self.store.start()
        stack.push_async_callback(self.store.close)
        stack.callback(self.transport.close)
        stack.push_async_callback(self.fleet.close)
        stack.push_async_callback(self.leadership.stop)
        stack.push_async_callback(self.failover.stop)
        stack.push_async_callback(self.fencing.stop)
        self.store.add_listener(lambda session, assignment: self.changed.fire())
        await self.relay.start()
        stack.push_async_callback(self.relay.stop)
        if not self.relay.durable and cfg.webhooks.targets:
            log.warning(
                "webhooks: no store.url, so accepted webhooks wait in memory: "
                "those not yet delivered are lost if the router stops; set store.url (Redis) "
                "for durable delivery"
            )
        if isinstance(self.outbox_store, RedisOutbox):
            await self.outbox_store.open()
            stack.push_async_callback(self.outbox_store.close)
        if isinstance(self.keys, RedisKeys):
            await self.keys.open()
            stack.push_async_callback(self.keys.close)
        if cfg.outbox.enabled:
            if not self.outbox_store.durable:
                log.warning("outbox: no store.url, so queued messages wait in memory: those not "
                            "yet sent are lost if the router stops; set store.url (Redis)")
            self.dispatcher.start()
            stack.push_async_callback(self.dispatcher.stop)
        for part in (self.monitor, self.alerter, self.leadership, self.drainer, self.fencing):
            part.start()
            if part is not self.leadership:  # its stop runs after failover's (above)
                stack.push_async_callback(part.stop)
        if self._shares_stats:
            self.worker_stats.start()
            stack.push_async_callback(self.worker_stats.stop)
        await self.proxy.start(cfg.listen.host, cfg.listen.port, reuse_port=reuse_port)
        stack.push_async_callback(self._shutdown_proxy)
        if admin:
            runner = self._admin_runner = web.AppRunner(
                create_admin_app(self.components), access_log=None, handle_signals=False)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, cfg.admin.host, cfg.admin.port, reuse_port=reuse_port or None)
            await site.start()
        stack.push_async_callback(self._signals.stop)
        log.info(
            "wa-router listening on %s:%d (admin %s:%d), %d instances, store %s, data path %s",
            cfg.listen.host, self.proxy.port, cfg.admin.host, self.admin_port if admin else 0,
            len(self.fleet), "memory" if cfg.store.url is None else "redis",
            "compiled (mypyc)" if build.mode() == "compiled" else "pure Python",
        )

    async def _shutdown_proxy(self) -> None:
        await self.proxy.shutdown(self.config.current.listen.shutdown_timeout)

    async def stop(self) -> None:
        """Stop what was started, in reverse order: the proxy finishes in-flight requests
        first, the store closes last. Safe to call twice."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._stack.aclose()
        finally:
            self._stopped.set()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP must never kill the router (its default action would); nor SIGUSR1.
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            loop.remove_signal_handler(signal.SIGHUP)
            loop.remove_signal_handler(signal.SIGUSR1)
            await self.stop()

    def _became_leader(self) -> None:
        self.failover.became_leader()

    # -- access log ------------------------------------------------------------------------

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate renamed the file): the access log opens ``path`` again."""
        if self.access is not None:
            self.access.reopen()

    def _set_access(self, access: AccessLog | None) -> None:
        """Put ``access`` in force for the next lines, then close the old one (its buffer
        is written first)."""
        old, self.access = self.access, access
        self.proxy.access = self.dispatcher.access = access
        if old is not None:
            old.close()

    def _close_access(self) -> None:
        self._set_access(None)

    # -- reload ----------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self._signals.spawn(self._reload_logged(), name="sighup-reload")

    async def _reload_logged(self) -> None:
        with contextlib.suppress(ConfigError):  # already logged and counted
            await self.reload()

    async def reload(self, config: Config | None = None) -> list[str]:
        """Re-read the config file (or take ``config``), validate it whole and apply it in
        one step; returns what changed. ``ConfigError`` with every problem when it is
        invalid or changes what needs a restart: the running config stays."""
        async with self._reload_lock:
            current = self.config.current
            try:
                if config is None:
                    if current.source is None:
                        raise ConfigError(["the config was not read from a file: nothing to reload"])
                    config = load_config(current.source)
                plan = plan_reload(current, config)
                if plan.problems:
                    raise ConfigError(list(plan.problems))
                access = self.access
                if config.log.access != current.log.access:
                    access = _open_access(config)  # before the swap: a bad path refuses it
            except ConfigError as e:
                self.reloads.record(False, tuple(e.problems))
                log.error("config reload refused, old config kept: %s", "; ".join(e.problems))
                self.events.emit("config_reload_failed", "config reload refused: "
                                 + "; ".join(e.problems), severity="warning",
                                 data={"problems": e.problems})
                raise
            changes = plan.summary()
            if not plan.unchanged:
                if access is not self.access:
                    self._set_access(access)
                await self._apply(config, plan.removed)
            self.reloads.record(True)
            log.info("config reloaded: %s", ", ".join(changes) or "no change")
            self.events.emit("config_reloaded", "config reloaded: " + (", ".join(changes) or "no change"),
                             data={"changes": changes})
            return changes

    async def _apply(self, config: Config, removed: tuple[str, ...]) -> None:
        """Swap in ``config``. No await before the fleet is updated, so requests never see
        half of it; the webhook relay's update (which may wait for a removed target's
        deliveries) comes after."""
        origins = {i.name: i.address.origin for i in self.fleet}
        old = self.config.swap(config)
        added = self.fleet.reconfigure(config.instances, metrics=config.metrics.enabled)
        for inst in self.fleet:
            if origins.get(inst.name, inst.address.origin) != inst.address.origin:
                self.transport.forget(origins[inst.name])  # moved: no idle connections left there
        for inst in added:
            self.monitor.add(inst)
        if old.log != config.log:
            logs.setup(config.log.format, config.log.level)
        for name in removed:
            log.info("instance %s removed by reload: draining it before it is dropped", name)
        self.changed.fire()
        self.drainer.kick()
        if old.webhooks != config.webhooks:
            await self.relay.update(config.webhooks)

    async def _admin_reload(self) -> list[str]:
        changes = await self.reload()
        # Worker processes: this one answers; the master passes SIGHUP on to every worker
        # (this one included: the same file again is "no change").
        if self.worker is not None:
            os.kill(os.getppid(), signal.SIGHUP)
        return changes


def _open_access(config: Config) -> AccessLog | None:
    try:
        return accesslog.open_log(config.log.access)
    except OSError as e:
        raise ConfigError([f"log.access.path: cannot open {config.log.access.path!r}: "
                           f"{e.strerror}"]) from None


def create_app(config: Config, *, store: AssignmentStore | None = None,
               transport: Transport | None = None, clock: Clock | None = None,
               worker: int | None = None, agents: AgentSource | None = None) -> App:
    """Build (not start) a router process. Side effects are injectable for tests;
    ``worker``: this process's index under ``listen.workers: N``."""
    return App(config, store=store, transport=transport, clock=clock, worker=worker,
               agents=agents)
