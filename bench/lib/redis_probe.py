"""A raw RESP probe on a redis-server the benchmark started: INFO counters, MONITOR, a few
stream checks, every command it sends accounted for."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

from bench.lib import HOST
from bench.lib.procs import BenchError

REDIS_PREFIX = "bench:"  # store.prefix of the benchmarks' routers


class RedisProbe:
    """A minimal RESP client on one raw socket, for INFO and a few checks.

    Not redis-py on purpose: redis-py sends commands of its own when it connects
    (``CLIENT SETINFO``...), and every command this probe sends must be known, because it
    is subtracted from the counts. The probe names itself ``bench-probe`` once, at connect.
    """

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.sent: Counter[str] = Counter()  # commands sent, as commandstats names them
        self.command("CLIENT", "SETNAME", "bench-probe")

    def close(self) -> None:
        """Close the connection (errors ignored: the server may be gone)."""
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def command(self, *args: str) -> object:
        """Send one command and read its reply (counted in ``sent``)."""
        name = args[0].lower()
        if name in ("client", "config") and len(args) > 1:
            name += "|" + args[1].lower()
        self.sent[name] += 1
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            data = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self) -> object:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise BenchError(f"redis: connection closed ({line!r})")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis error: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise BenchError(f"redis: unexpected reply {line[:100]!r}")

    def snapshot(self) -> RedisStats:
        """``INFO stats commandstats clients`` (Redis >= 7: several sections at once).

        Redis updates its counters after a command has run, so a snapshot does not count
        the INFO that took it; the commands this probe sent before it are noted with it."""
        sent_before = Counter(self.sent)
        text = self.command("INFO", "stats", "commandstats", "clients")
        assert isinstance(text, str)
        calls: dict[str, int] = {}
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            if key.startswith("cmdstat_"):
                m = re.search(r"(?:^|,)calls=(\d+)", value)
                if m:
                    calls[key.removeprefix("cmdstat_")] = int(m.group(1))
            else:
                values[key] = value.strip()
        return RedisStats(
            calls=calls,
            total=int(values["total_commands_processed"]),
            clients=int(values["connected_clients"]),
            sent=sent_before,
        )


@dataclass
class RedisStats:
    """One ``INFO`` of the server, and what the probe had sent before it."""

    calls: dict[str, int]  # command -> calls so far (commandstats)
    total: int  # total_commands_processed
    clients: int  # connected_clients
    sent: Counter[str]  # commands the probe had sent before this snapshot's INFO

    def own_since(self, before: RedisStats) -> Counter[str]:
        """What the probe sent between two snapshots (the earlier one's INFO included)."""
        return self.sent - before.sent

    def since(self, before: RedisStats) -> dict[str, int]:
        """Commands others (the router) called between ``before`` and this snapshot: the
        commandstats difference minus the probe's own commands; only the non-zero ones."""
        own = self.own_since(before)
        out: dict[str, int] = {}
        for name in sorted(self.calls.keys() | before.calls.keys()):
            n = self.calls.get(name, 0) - before.calls.get(name, 0) - own.get(name, 0)
            if n:
                out[name] = n
        return out

    def total_since(self, before: RedisStats) -> int:
        """The same from ``total_commands_processed`` (a cross-check of ``since``)."""
        return self.total - before.total - sum(self.own_since(before).values())


_MONITOR_LINE = re.compile(r"^\+?\S+ \[\d+ ([^\]]+)\] (.*)$")
_MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
LEASE = "leader lease (timer)"
KEEPALIVE = "pub/sub keepalive (timer)"
DRAIN_SYNC = "drain sync (timer)"  # SMEMBERS P drained, every router, once a second
WORKER_STATS = "worker stats (timer)"  # workers: N: SET P workers:<i> once a second
OUTBOX = "outbox dispatcher (timer)"  # looks for due sessions (idle: once a second), figures
AGENTS = "agent leases (timer)"  # the leader looks whether instances have agents, each second
OTHER = "other"


class RedisMonitor:
    """``MONITOR`` on its own connection, read by a thread, during one measured run: which
    connection sent each command, so that timer-driven commands (the leader lease renewal,
    the pub/sub keepalive PING) can be told apart from any a request would cause.

    Commands run inside Lua scripts show as coming from ``lua``. ``stop()`` makes the probe
    send an ``ECHO`` marker and reads until it, so that nothing executed before is missed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5.0)
        self.file = self.sock.makefile("rb")
        self.sock.sendall(b"CLIENT SETNAME bench-monitor\r\nMONITOR\r\n")
        for _ in range(2):
            reply = self.file.readline()
            if not reply.startswith(b"+OK"):
                raise BenchError(f"redis MONITOR: unexpected reply {reply[:100]!r}")
        self.sock.settimeout(None)
        self.lines: list[str] = []
        self.marker: str | None = None
        self.seen_marker = threading.Event()
        self.thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self.file:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if self.marker is not None and f'"echo" "{self.marker}"' in line.lower():
                    self.seen_marker.set()
                    return
                if len(self.lines) < 100_000:  # enough to classify; bounded memory
                    self.lines.append(line)

    def stop(self, probe: RedisProbe) -> list[str]:
        """Stop monitoring (after a marker sent through ``probe``); the lines seen."""
        self.marker = f"bench-monitor-end-{time.monotonic_ns()}"
        probe.command("ECHO", self.marker)
        found = self.seen_marker.wait(10)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()
        self.thread.join(5)
        if not found:
            raise BenchError("redis MONITOR: the end marker never arrived")
        return self.lines


def classify_monitor(
    lines: list[str], own: set[str], subscribers: set[str]
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Commands seen by MONITOR, minus those of ``own`` addresses, by cause: the leader
    lease (its scripts and their commands touch only ``P leader*`` keys), the pub/sub
    keepalive (PING on a subscribed connection), the drainer's sync of operator drains
    (SMEMBERS of ``P drained``, once a second), with ``listen.workers: N`` the workers'
    counter snapshots (SET ``P workers:<i>`` once a second, MGET when /metrics is read),
    the outbox dispatcher (its scripts name ``P outbox:`` as their first argument; idle, it
    looks for due sessions once a second and reads its figures), other. Also the first "other" lines."""
    out: dict[str, Counter[str]] = {
        LEASE: Counter(), KEEPALIVE: Counter(), DRAIN_SYNC: Counter(), WORKER_STATS: Counter(),
        OUTBOX: Counter(), AGENTS: Counter(), OTHER: Counter(),
    }  # fmt: skip
    drained = REDIS_PREFIX + "drained"
    worker_stats = REDIS_PREFIX + "workers:"
    samples: list[str] = []
    lease = REDIS_PREFIX + "leader"
    outbox = REDIS_PREFIX + "outbox:"
    agents = REDIS_PREFIX + "agent:"
    for line in lines:
        m = _MONITOR_LINE.match(line)
        if m is None:
            continue
        source, args = m.group(1), _MONITOR_ARG.findall(m.group(2))
        if source in own or not args:
            continue
        cmd = args[0].lower()
        scripted_outbox = False
        if cmd in ("evalsha", "eval", "evalsha_ro", "eval_ro") and len(args) > 2:
            keys = args[3 : 3 + int(args[2])] if args[2].isdigit() else []
            # the outbox's scripts take no keys: their first argument is the key prefix
            scripted_outbox = not keys and len(args) > 3 and args[3] == outbox
        else:
            keys = args[1:2]
        name = cmd + (" (in a script)" if source == "lua" else "")
        if keys and all(k.startswith(lease) for k in keys):
            out[LEASE][name] += 1
        elif cmd == "ping" and source in subscribers:
            out[KEEPALIVE][name] += 1
        elif cmd == "smembers" and keys == [drained]:
            out[DRAIN_SYNC][name] += 1
        elif cmd in ("set", "mget") and keys and all(k.startswith(worker_stats) for k in keys):
            out[WORKER_STATS][name] += 1
        elif scripted_outbox or (keys and all(k.startswith(outbox) for k in keys)):
            out[OUTBOX][name] += 1
        elif cmd == "exists" and args[1:] and all(k.startswith(agents) for k in args[1:]):
            out[AGENTS][name] += 1
        else:
            out[OTHER][name] += 1
            if len(samples) < 10:
                samples.append(line[:300])
    return {k: dict(v) for k, v in out.items()}, samples


def client_list(probe: RedisProbe) -> list[dict[str, str]]:
    """CLIENT LIST, one mapping of its fields per connection."""
    listing = probe.command("CLIENT", "LIST")
    text = listing if isinstance(listing, str) else ""
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in text.splitlines()]


def fmt_commands(commands: dict[str, int]) -> str:
    """Command counts as one line: ``get 3, set 1`` (``none``)."""
    return ", ".join(f"{k} {v:,}" for k, v in sorted(commands.items())) or "none"


def entries_added(probe: RedisProbe, key: str) -> int:
    """Entries ever added to a stream (XINFO STREAM ``entries-added``, Redis >= 7); 0 if
    the stream does not exist yet."""
    if probe.command("EXISTS", key) == 0:
        return 0
    reply = probe.command("XINFO", "STREAM", key)
    assert isinstance(reply, list)
    info = dict(zip(reply[::2], reply[1::2], strict=True))
    return int(info["entries-added"])


def xlen(probe: RedisProbe, key: str) -> int:
    """XLEN of a stream (0 when it does not exist)."""
    n = probe.command("XLEN", key)
    assert isinstance(n, int)
    return n
