"""A real redis-server for tests and benchmarks: loopback, free port, its own directory.

``RedisServer(tmp_dir).start()`` runs ``redis-server`` with ``appendonly yes`` (by default)
in ``tmp_dir``; ``kill()`` sends SIGKILL; ``start()`` again reuses the same port and
directory, so the restarted server reloads its AOF. ``sentinel_for(server)`` runs a
Sentinel (``redis-server --sentinel``) monitoring it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

# The benchmarks' free ports, redis-server command line and PING: one of each for both.
from bench.lib.configs import redis_args, redis_url
from bench.lib.ports import free_port as free_port
from bench.lib.procs import redis_ping

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(
        self, directory: Path, port: int | None = None, *, appendonly: bool = True, name: str = "redis"
    ) -> None:
        self.dir = directory / f"{name}-data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.unixsocket = self.dir / "redis.sock"
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return redis_url(self.port)

    def args(self) -> list[str]:
        return redis_args(
            self.dir, self.port, appendonly=self.appendonly, logfile=str(self.log),
            unixsocket=str(self.unixsocket), server=REDIS_SERVER,
        )  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.tail()}")
            if redis_ping(self.port):
                return
            time.sleep(0.01)
        raise TimeoutError(f"redis-server on port {self.port} not ready: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what reached the AOF survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a blackholed server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` monitoring ``master`` as ``service`` (quorum 1)."""

    def __init__(self, directory: Path, master: RedisServer, service: str = "mymaster") -> None:
        super().__init__(directory, appendonly=False, name=f"sentinel-{service}")
        self.master = master
        self.service = service
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.log}\n"
            f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
        )

    def args(self) -> list[str]:
        return [REDIS_SERVER, str(self.conf), "--sentinel"]

