"""Network namespaces and a private bridge for a simulated fleet (Linux, root, iproute2).

Every simulated host gets its own network stack: a namespace ``nsw-<tag>-<i>`` whose
``eth0`` is one end of a veth pair, the other end enslaved to a bridge ``nswb-<tag>``
that carries the subnet's first address (so this machine's own namespace, outside the
fleet, reaches every host). Nothing is routed or NATed off the bridge: the fleet's
hosts can reach each other and this machine, nothing else.

Every command is an argv list run with ``ip``; every name this module creates carries
the fleet's tag, and removal takes the exact names recorded when they were made.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from orchestrator.errors import NumasweepError

# 10.77.0.0/16 is split into /24s; the first one no route or address of this machine touches is used.
DEFAULT_POOL = ipaddress.ip_network("10.77.0.0/16")


class NetnsError(NumasweepError):
    """A namespace, bridge or address cannot be made (the message names the ip command)."""


@dataclass(frozen=True)
class HostLink:
    namespace: str     # ip netns name
    veth: str          # host-side end on the bridge
    address: str       # the host's IPv4 address inside its namespace


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None: they can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root (network namespaces need CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"nsw-probe-{os.getpid()}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip() or res.returncode}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {res.stderr.strip() or res.returncode}")
    return res


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address or a route in (all namespaces it can see)."""
    nets = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for line in _ip(*args, check=False).stdout.splitlines():
            for word in line.split():
                if "/" in word or word.count(".") == 3:
                    try:
                        nets.append(ipaddress.ip_network(word, strict=False))
                    except ValueError:
                        pass
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network) and n.prefixlen > 0]


def pick_subnet(pool: ipaddress.IPv4Network = DEFAULT_POOL,
                used: list[ipaddress.IPv4Network] | None = None) -> ipaddress.IPv4Network:
    """The first /24 of ``pool`` that overlaps nothing in ``used`` (default: this machine's)."""
    used = used_networks() if used is None else used
    for net in pool.subnets(new_prefix=24):
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError(f"no free /24 left in {pool} (give --subnet)")


def create_bridge(bridge: str, subnet: ipaddress.IPv4Network) -> str:
    """Make the bridge with the subnet's first address; returns that address (this machine's side)."""
    gateway = str(next(subnet.hosts()))
    _ip("link", "add", bridge, "type", "bridge")
    _ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
    _ip("link", "set", bridge, "up")
    return gateway


def create_host(tag: str, index: int, bridge: str, subnet: ipaddress.IPv4Network) -> HostLink:
    """A namespace with lo and eth0 up, eth0 on the bridge at the subnet's (index + 2)th address."""
    ns, veth, peer = f"nsw-{tag}-{index}", f"nswv{tag}{index}", f"nswp{tag}{index}"
    hosts = list(subnet.hosts())
    if index + 1 >= len(hosts):
        raise NetnsError(f"subnet {subnet} has no address for host {index}")
    address, gateway = str(hosts[index + 1]), str(hosts[0])
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("-n", ns, "link", "set", peer, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "default", "via", gateway)
        _ip("link", "set", veth, "master", bridge)
        _ip("link", "set", veth, "up")
    except NetnsError:  # not recorded yet: undo here what this call made
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", veth, check=False)
        raise
    return HostLink(namespace=ns, veth=veth, address=address)


def namespace_pids(namespace: str) -> list[int]:
    """PIDs of every process whose network namespace is ``namespace`` (none if it is gone)."""
    res = _ip("netns", "pids", namespace, check=False)
    return [int(w) for w in res.stdout.split() if w.isdigit()] if res.returncode == 0 else []


def namespaces() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()}


def remove_namespace(namespace: str) -> bool:
    """Delete the namespace (its veth end goes with it); True if it existed."""
    if namespace not in namespaces():
        return False
    _ip("netns", "del", namespace)
    return True


def remove_link(name: str) -> bool:
    """Delete a link (the bridge, or a veth left behind); True if it existed."""
    # A veth goes away with its namespace, a moment after `ip netns del` returns: not an error.
    return _ip("link", "del", name, check=False).returncode == 0


def exec_argv(namespace: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``namespace`` (``ip netns exec`` execs it: the PID is argv's own)."""
    return ["ip", "netns", "exec", namespace, *argv]
