"""Session lifecycle: start delays, status events, state-file persistence."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from router.sim import statefile
from router.sim.events import Hub
from router.sim.model import RUNNING, Registry, Session, Status

log = logging.getLogger(__name__)


class UnknownSession(LookupError):
    """This instance does not know the session (WAHA answers 404)."""


class SessionExists(ValueError):
    """``POST /api/sessions`` for a name that already exists (422)."""


class SessionManager:
    """Applies WAHA session actions to a ``Registry``.

    Every status change emits a ``session.status`` event and, with a state file, saves it.
    A start moves to STARTING, then to WORKING after ``start_delay`` (an asyncio task that a
    stop cancels); with no delay the session is WORKING when the call returns.
    """

    def __init__(
        self,
        instance: str,
        hub: Hub,
        *,
        start_delay: float = 0.0,
        state_file: str | None = None,
    ) -> None:
        self.instance = instance
        self.hub = hub
        self.start_delay = start_delay
        self.state_file = state_file
        self.registry = Registry()
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    # -- queries ----------------------------------------------------------------------

    def get(self, name: str) -> Session:
        """The session, or ``UnknownSession``."""
        session = self.registry.get(name)
        if session is None:
            raise UnknownSession(name)
        return session

    async def settle(self, name: str, max_wait: float) -> Session:
        """The session once it is no longer STARTING, waiting at most ``max_wait`` seconds.

        WAHA waits a little for a starting session before answering 422.
        """
        session = self.get(name)
        if session.status is not Status.STARTING or max_wait <= 0:
            return session
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(fut)
        try:
            await asyncio.wait_for(fut, max_wait)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[name]
        return self.get(name)

    # -- actions ----------------------------------------------------------------------

    def create(self, name: str, *, start: bool = True) -> Session:
        """``POST /api/sessions``: a new session, started unless ``start`` is false."""
        if name in self.registry:
            raise SessionExists(name)
        session = self.registry.add(name)
        self._save()
        if start:
            self.start(name)
        return session

    def start(self, name: str) -> Session:
        """Start (creating it if unknown: auth is in shared storage). No-op when running."""
        session = self.registry.get(name)
        if session is None:
            session = self.registry.add(name)
            self._save()
        if session.status in RUNNING:
            return session
        self._set(name, Status.STARTING)
        if self.start_delay <= 0:
            self._set(name, Status.WORKING)
        else:
            self._starting[name] = asyncio.create_task(
                self._finish_start(name), name=f"sim-start-{name}"
            )
        return session

    def stop(self, name: str) -> Session:
        """Stop a known session (cancels a pending start)."""
        session = self.get(name)
        self._cancel(name)
        self._set(name, Status.STOPPED)
        return session

    def restart(self, name: str) -> Session:
        """Stop then start a known session."""
        self.stop(name)
        return self.start(name)

    def logout(self, name: str) -> Session:
        """Log a known session out: it stops and forgets its account (``me``)."""
        return self.stop(name)

    def delete(self, name: str) -> Session:
        """Stop and forget a session (WAHA ``DELETE /api/sessions/{s}``)."""
        session = self.stop(name)
        self.registry.remove(name)
        self._save()
        return session

    def force(self, name: str, status: Status) -> Session:
        """Put a known session in ``status`` directly (tests: FAILED, SCAN_QR_CODE...)."""
        session = self.get(name)
        self._cancel(name)
        self._set(name, status)
        return session

    def reset(self) -> None:
        """Forget every session without events (``POST /sim/reset?sessions=true``)."""
        for name in list(self._starting):
            self._cancel(name)
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
        self.registry.clear()
        self._save()

    # -- lifecycle --------------------------------------------------------------------

    def boot(self) -> None:
        """Load the state file; sessions that were running start again, like WAHA's restart."""
        if not self.state_file:
            return
        saved = statefile.load(self.state_file)
        self.registry.restore(
            (name, Status.STOPPED if status in RUNNING else status) for name, status in saved
        )
        for name, status in saved:
            if status in RUNNING:
                self.start(name)
        self._save()
        log.info("restored %d sessions from %s", len(saved), self.state_file)

    async def close(self) -> None:
        """Cancel pending starts (the state file keeps what was running)."""
        tasks = list(self._starting.values())
        self._starting.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- internals --------------------------------------------------------------------

    async def _finish_start(self, name: str) -> None:
        await asyncio.sleep(self.start_delay)
        self._starting.pop(name, None)
        session = self.registry.get(name)
        if session is not None and session.status is Status.STARTING:
            self._set(name, Status.WORKING)

    def _cancel(self, name: str) -> None:
        task = self._starting.pop(name, None)
        if task is not None:
            task.cancel()

    def _set(self, name: str, status: Status) -> None:
        if not self.registry.set_status(name, status):
            return
        session = self.registry.get(name)
        assert session is not None
        for fut in self._waiters.pop(name, []):
            if not fut.done():
                fut.set_result(None)
        self._save()
        self.hub.emit(
            "session.status",
            name,
            session.me(),
            {"status": str(status), "statuses": session.statuses()},
        )

    def _save(self) -> None:
        if self.state_file:
            statefile.save(self.state_file, self.instance, self.registry.snapshot())
