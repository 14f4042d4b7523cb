"""CPU and memory accounting from /proc: our process trees, wrk, the whole machine."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx master + workers)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += tree_pids(int(child))
    except OSError:
        pass
    return out


def cpu_seconds_own(pid: int) -> float:
    """User + system CPU time of ``pid`` alone (not its children), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants, in seconds."""
    return sum(cpu_seconds_own(p) for p in tree_pids(pid))


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent in user, nice and system mode, in seconds.
    irq/softirq are left out: they are not charged to processes, so they cannot be split
    between our processes and others (loopback traffic makes a lot of softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of the waited-for children of this process (wrk runs), in seconds."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class CpuSnapshot:
    """CPU counters at one instant: the target tree, the backend tree, wrk, the
    redis-server (when one runs), the machine."""

    wall: float
    target: float
    backend: float
    wrk: float
    redis: float
    machine: float
    idle: float = 0.0  # our other processes, idle during this run (other routers, say)

    @classmethod
    def take(
        cls,
        target_pid: int | None,
        backend_pid: int,
        redis_pid: int | None = None,
        idle_pids: Sequence[int] = (),
    ) -> CpuSnapshot:
        """The counters now (``target_pid`` None: no target, counted as 0)."""
        return cls(
            wall=time.monotonic(),
            target=cpu_seconds(target_pid) if target_pid is not None else 0.0,
            backend=cpu_seconds(backend_pid),
            wrk=children_cpu_seconds(),
            redis=cpu_seconds(redis_pid) if redis_pid is not None else 0.0,
            machine=machine_cpu_seconds(),
            idle=sum(cpu_seconds(p) for p in idle_pids),
        )

    def usage_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Cores used between ``before`` and now, per part; ``others`` is every process
        that is not ours (a test suite running next to the benchmark, say)."""
        wall = self.wall - before.wall
        used = {
            "target": (self.target - before.target) / wall,
            "backend": (self.backend - before.backend) / wall,
            "wrk": (self.wrk - before.wrk) / wall,
            "redis": (self.redis - before.redis) / wall,
            "idle": (self.idle - before.idle) / wall,
        }
        used["others"] = max(0.0, (self.machine - before.machine) / wall - sum(used.values()))
        return used


def others_cores(pids: Sequence[int], seconds: float = 0.5) -> float:
    """Cores that processes other than ``pids`` (and their children) used over the next
    ``seconds``: how busy the rest of the machine is."""
    t0, m0 = time.monotonic(), machine_cpu_seconds()
    ours0 = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    ours1 = sum(cpu_seconds(p) for p in pids)
    return max(0.0, (machine_cpu_seconds() - m0 - (ours1 - ours0)) / (time.monotonic() - t0))


def status_kib(pid: int | str, keys: Sequence[str] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """Fields of /proc/PID/status given in KiB (``VmRSS``, ``VmHWM``...); ``pid`` may be
    ``"self"``. Empty when the process is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0])
    return out


def rss_kib(pid: int | str, field_name: str = "VmRSS") -> int:
    """One /proc/PID/status field in KiB; KeyError when the process (or field) is gone."""
    return status_kib(pid, (field_name,))[field_name]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) from /proc/PID/status, in KiB."""
    return status_kib(pid)


def tree_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM summed over ``pid`` and its descendants (a router master and its
    workers), in KiB; ``processes``: how many there were."""
    out = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for p in tree_pids(pid):
        mem = memory_kib(p)
        if mem:
            out["processes"] += 1
            for key in ("VmRSS", "VmHWM"):
                out[key] += mem.get(key, 0)
    return out
