"""``wa-router agent``: the thin async layer applying ``router.agent.fence`` decisions.

It ticks every ``TICK``; renewals, stop sweeps, orders and acks run as tasks so that a
hung Redis or a slow instance never delays the fencing deadline. Redis calls go through
``guarded`` (bounded, errors become ``StoreUnavailable``); the local instance is called
with the router's ``InstanceApi`` over the router's ``HttpTransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from router.agent import fence, keys
from router.clock import Clock, LoopClock
from router.config.holder import ConfigHolder
from router.config.model import AgentConfig, Config, InstanceConfig
from router.errors import StoreUnavailable, UpstreamError
from router.instance_api import InstanceApi
from router.instances import Instance
from router.store.redis_client import RedisClients
from router.store.redis_commands import guarded
from router.tasks import Tasks
from router.transport import HttpTransport

log = logging.getLogger("wa_router.agent")

TICK = 0.1
STOP_COMMAND_TIMEOUT = 10.0


class Agent:
    def __init__(self, config: Config, redis: Redis, clock: Clock | None = None,
                 api: InstanceApi | None = None) -> None:
        assert config.agent is not None
        self.cfg: AgentConfig = config.agent
        local = InstanceConfig(name=self.cfg.instance, url=self.cfg.url, api_key=self.cfg.api_key)
        self._config = ConfigHolder(replace(config, instances=(local,)))
        self.instance = Instance(local, metrics=False)
        self.api = api or InstanceApi(HttpTransport(), self._config)
        self.redis = redis
        self.keys = keys.keys(config.store.prefix, self.cfg.instance)
        self.key_map = config.store.prefix + "assignments"
        self.clock = clock or LoopClock()
        self.timing = fence.Timing(self.cfg.renew, self.cfg.fence_after)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.state = fence.start(self.clock.now())
        self.tasks = Tasks("agent")
        self._sweeping = False
        self.stopped_total = 0

    def __repr__(self) -> str:
        return f"<Agent {self.cfg.instance} fenced={self.state.fenced}>"

    @property
    def _deadline(self) -> float:
        # A renewal that outlives its period is as good as failed: the next one is due.
        return min(self.cfg.renew, self.cfg.fence_after / 2)

    async def run(self) -> None:
        while True:
            self._apply(*fence.on_tick(self.state, self.clock.now(), self.timing))
            await self.clock.sleep(TICK)

    async def stop(self) -> None:
        # The lease is left to expire, not deleted: the leader then waits fence_after
        # plus the margin, as for an agent that died, before moving anything.
        await self.tasks.stop()

    # -- applying decisions ----------------------------------------------------------------

    def _apply(self, state: fence.AgentState, actions: list[fence.Action]) -> None:
        self.state = state
        for a in actions:
            if isinstance(a, fence.Renew):
                self._spawn(self._renew(self.clock.now()))
            elif isinstance(a, fence.SelfFence):
                log.warning("self_fence: instance %s: lease not renewed for %.1fs: stopping "
                            "every session", self.cfg.instance, self.clock.now() - a.since)
                self._sweep("self-fence")
            elif isinstance(a, fence.StopAll):
                self._sweep("fenced")
            elif isinstance(a, fence.StandDown):
                log.warning("fence_lifted: instance %s: lease held again after %.1fs fenced",
                            self.cfg.instance, a.fenced_for)
                self._spawn(self._stop_assigned_elsewhere())
            elif isinstance(a, fence.Reconcile):
                self._spawn(self._stop_assigned_elsewhere())
            elif isinstance(a, fence.ExecuteOrder):
                self._spawn(self._execute(a.order))
            elif isinstance(a, fence.Ack):
                self._spawn(self._ack(a.order))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.spawn(coro)

    def _sweep(self, why: str) -> None:
        if not self._sweeping:  # one sweep at a time: a slow instance must not pile them up
            self._sweeping = True
            self._spawn(self._sweep_once(why))

    async def _sweep_once(self, why: str) -> None:
        try:
            await self.stop_everything(why)
        finally:
            self._sweeping = False

    async def _renew(self, sent: float) -> None:
        ok, order = True, None
        try:
            order = await guarded(
                lambda: keys.renew(self.redis, self.keys, self.holder, self.cfg.renew,
                                   self.cfg.fence_after),
                deadline=self._deadline, what="agent lease")
        except StoreUnavailable as e:
            ok = False
            log.debug("lease renewal failed: %s", e.message)
        self._apply(*fence.on_renewed(self.state, ok, sent, self.clock.now(), self.timing, order))

    async def _execute(self, order: str) -> None:
        done = await self.stop_everything(f"stop order {order}")
        if done:
            log.warning("handoff: instance %s: stop order %s executed", self.cfg.instance, order)
        self._apply(*fence.on_order_done(self.state, order, done))

    async def _ack(self, order: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # unacked: the leader falls back on the lease
            await guarded(lambda: keys.acknowledge(self.redis, self.keys, order),
                          deadline=self._deadline, what="agent ack")

    # -- the local instance ----------------------------------------------------------------

    async def stop_everything(self, why: str) -> bool:
        """Stop every running local session; True when nothing runs any more. An instance
        that cannot be listed runs nothing only if it refuses connections (its process is
        gone); one that hangs may still hold live sessions, so that is not confirmed (the
        leader then waits for the lease instead)."""
        names = await self.api.running(self.instance)
        if names is None:
            return await self._gone()
        if not names:
            return True
        if not self.api.can_stop:
            return await self._stop_instance(why, len(names))
        ok = True
        for name in names:
            ok = await self._stop(name, why) and ok
        return ok

    async def _stop_instance(self, why: str, sessions: int) -> bool:
        """No call ends one copy (``failover.stop: none``): run ``agent.stop_command`` to
        stop the whole instance; fenced once it refuses connections."""
        command = self.cfg.stop_command
        if not command:  # check-config refuses this; a file edited under a running agent
            log.error("cannot fence %s (%s): failover.stop is none and agent.stop_command is "
                      "not set", self.cfg.instance, why)
            return False
        log.warning("stopping instance %s (%s, %d sessions running): %s", self.cfg.instance,
                    why, sessions, command[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
        except OSError as e:
            log.error("agent.stop_command could not run: %s", e.strerror or e)
            return False
        try:
            code = await asyncio.wait_for(proc.wait(), STOP_COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("agent.stop_command ran over %gs: killed", STOP_COMMAND_TIMEOUT)
            return False
        if code != 0:
            log.error("agent.stop_command exited with %d", code)
            return False
        deadline = self.clock.now() + STOP_COMMAND_TIMEOUT
        while not await self._gone():  # a process takes a moment to close its socket
            if self.clock.now() >= deadline:
                return False
            await self.clock.sleep(TICK)
        self.stopped_total += sessions
        return True

    async def _gone(self) -> bool:
        """Whether the local instance refuses connections (nothing of it runs)."""
        try:
            await self.api.request(self.instance, "GET", "/", timeout=1.0)
        except UpstreamError as e:
            return not e.reached_instance
        return False

    async def _stop(self, name: str, why: str) -> bool:
        try:
            resp = await self.api.stop(self.instance, name)
        except UpstreamError as e:
            log.warning("stopping %s failed (%s): %s", name, why, e.message)
            return False
        if resp.status >= 300 and resp.status != 404:
            log.warning("stopping %s failed (%s): HTTP %d", name, why, resp.status)
            return False
        self.stopped_total += 1
        log.info("stopped %s on %s (%s)", name, self.cfg.instance, why)
        return True

    async def _stop_assigned_elsewhere(self) -> None:
        """After a fence or a restart: stop the local copies the map gives to another
        instance (unknown sessions are left for the router to adopt)."""
        names = await self.api.running(self.instance)
        if not names:
            return
        if not self.api.can_stop:
            # Stopping the instance would end its own sessions too; the router's
            # rediscovery raises stale_copy for the operator.
            return
        try:
            values = await guarded(lambda: self.redis.hmget(self.key_map, names),
                                   deadline=self._deadline, what="agent map read")
        except StoreUnavailable:
            return  # retried at the next healing; meanwhile the router's rediscovery acts
        for name, value in zip(names, values, strict=True):
            owner = keys.text(value)
            if owner is not None and owner.split(":", 1)[0] != self.cfg.instance:
                await self._stop(name, f"assigned to {owner.split(':', 1)[0]}")


async def run_agent(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    if config.store.url is None:
        raise SystemExit("wa-router agent: store.url is required (the lease lives in Redis)")
    clients = RedisClients(config.store.url.value)
    redis = clients.client(op_timeout=1.0, name="wa-router-agent", decode_responses=True)
    agent = Agent(config, redis)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(agent.run())
    log.info("agent for %s: renew %.1fs, fence after %.1fs", agent.cfg.instance,
             agent.cfg.renew, agent.cfg.fence_after)
    try:
        await stop.wait()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await agent.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()
        await clients.close()
