"""Network namespaces a partition test makes for itself (root only), and partitions in them.

Each namespace is joined to the root namespace by a veth pair and given a /24 of
10.213.0.0/16 that nothing on the machine routes. Before the subnet is given to any
interface, an ``unreachable`` route for it goes into the root namespace (metric 4000: the
veth's own route wins while it exists), so whatever happens to the veth (cut, deleted, a
test killed halfway) no packet for the subnet ever leaves by the default route. Cuts are
made on the namespace's side: its end of the veth set down (everything cut), or an
nftables rule inside it dropping what arrives for one port (only that path cut). Teardown
stops the processes started inside, deletes the namespace (and the veth pair with it) and
the route.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SUBNETS = "10.213"  # 10.213.<n>.0/24, n in 1..254: the first that nothing uses
ROUTE_METRIC = "4000"
NFT_TABLE = "wart_partition"


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=15)


def unavailable() -> str | None:
    """Why this machine cannot run the partition tests (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, nftables)"
    probe = f"wart-probe-{os.getpid()}"
    try:
        ip("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        err = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        return f"cannot create a network namespace here: {err}"
    ip("ip", "netns", "del", probe, check=False)
    return None


def _free_subnet() -> int:
    used = ip("ip", "-4", "route", "show", "table", "all").stdout + ip("ip", "-4", "addr").stdout
    for n in range(1, 255):
        if f"{SUBNETS}.{n}." not in used:
            return n
    raise RuntimeError(f"no free /24 in {SUBNETS}.0.0/16")


class Netns:
    """One namespace ``wart-<pid>-<tag>``: ``host_ip`` is the root side of its veth,
    ``ns_ip`` the namespace's side."""

    def __init__(self, tag: str) -> None:
        self.name = f"wart-{os.getpid()}-{tag}"
        n = _free_subnet()
        self.cidr = f"{SUBNETS}.{n}.0/24"
        self.host_ip = f"{SUBNETS}.{n}.1"
        self.ns_ip = f"{SUBNETS}.{n}.2"
        self.veth_host = f"wr{n}h"
        self.veth_ns = f"wr{n}n"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._route = False
        self._made = False

    def __repr__(self) -> str:
        return f"<Netns {self.name} {self.cidr}>"

    def create(self) -> Netns:
        # First the safety net, then the namespace and its subnet.
        ip("ip", "route", "add", "unreachable", self.cidr, "metric", ROUTE_METRIC)
        self._route = True
        ip("ip", "netns", "add", self.name)
        self._made = True
        ip("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns,
           "netns", self.name)
        ip("ip", "link", "set", "lo", "up", ns=self.name)
        ip("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.veth_ns, ns=self.name)
        ip("ip", "link", "set", self.veth_ns, "up", ns=self.name)
        ip("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.veth_host)
        ip("ip", "link", "set", self.veth_host, "up")
        return self

    # -- partitions (always on the namespace's side) --------------------------------------

    def cut(self) -> None:
        """Everything in the namespace loses everything outside it."""
        ip("ip", "link", "set", self.veth_ns, "down", ns=self.name)

    def heal(self) -> None:
        ip("ip", "link", "set", self.veth_ns, "up", ns=self.name)

    def block_port(self, port: int) -> None:
        """Drop what arrives from outside for ``port`` (the rest keeps flowing)."""
        script = (f"table inet {NFT_TABLE} {{\n chain input {{\n"
                  f"  type filter hook input priority 0;\n"
                  f"  iifname \"{self.veth_ns}\" tcp dport {port} drop\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=script,
                       text=True, check=True, capture_output=True, timeout=15)

    def unblock(self) -> None:
        ip("nft", "delete", "table", "inet", NFT_TABLE, ns=self.name, check=False)

    # -- processes ------------------------------------------------------------------------

    def popen(self, argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], cwd=cwd,
                                stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def destroy(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self._made:
            ip("ip", "netns", "del", self.name, check=False)  # the veth pair goes with it
            self._made = False
        if self._route:
            ip("ip", "route", "del", "unreachable", self.cidr, "metric", ROUTE_METRIC, check=False)
            self._route = False
