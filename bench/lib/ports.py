"""Free loopback ports, for benchmarks and tests alike."""

from __future__ import annotations

import socket

from bench.lib import HOST


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open until every one is chosen, so
    that the kernel cannot hand out the same port twice)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free loopback port."""
    return free_ports(1)[0]
