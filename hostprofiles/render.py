"""describe(profile): the human table, sockets -> nodes -> dies -> CPUs, then tuning."""
from __future__ import annotations

from .cpulist import format_cpulist
from .profile import GIB, HostProfile
from .tuning import check


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def _v(value: object) -> str:
    """None prints as '?': unknown (file missing), not 'off'."""
    return "?" if value is None else str(value)


def describe(p: HostProfile, warnings: bool = True) -> str:
    isa = ", ".join(k for k, v in p.isa.items() if v) or "none of avx2/avx512/amx"
    lines = [
        f"host {p.name}{' (simulated)' if p.simulated else ''}  fingerprint {p.fingerprint}",
        f"  cpu      {p.cpu_model or '?'} ({p.cpu_vendor or '?'}); ISA: {isa}",
        f"  layout   {p.sockets} socket(s), {p.cores} cores, {len(p.cpus)} threads, "
        f"SMT {'on' if p.smt else 'off'}, {len(p.nodes)} NUMA node(s) ({p.numa_mode}), "
        f"{len(p.die_groups)} die/L3 group(s); memory {_gib(p.mem_total_bytes)}",
    ]
    die_of = {cpu: k for k, g in enumerate(p.die_groups) for cpu in g}
    for s in p.socket_ids or (None,):
        lines.append(f"  socket {s if s is not None else '?'}")
        nodes = [n for n in p.nodes if s is None or s in p.node_sockets(n.id)] or [None]
        for n in nodes:
            cpus = [c for c in p.cpus if (c.socket == s or s is None) and (n is None or c.node == n.id)]
            if n is not None:
                lines.append(f"    node {n.id}: {_gib(n.mem_total_bytes)}, distances "
                             f"{' '.join(map(str, n.distances)) or '?'}")
            dies = sorted({die_of[c.id] for c in cpus})
            for k in dies:
                group = [c for c in cpus if die_of[c.id] == k]
                cores = len({c.core for c in group})
                lines.append(f"      die {k}: {cores} cores, cpus {format_cpulist(c.id for c in group)}")
    bw = p.mem_bandwidth_gbs
    lines.append(
        f"  tuning   THP {_v(p.thp_enabled)}/{_v(p.thp_defrag)}, numa_balancing {_v(p.numa_balancing)}, "
        f"governor {_v(p.governor)}, epp {_v(p.epp)}, driver {_v(p.cpufreq_driver)}, boost {_v(p.boost)}, "
        f"platform_profile {_v(p.platform_profile)}, kernel {_v(p.kernel)}"
    )
    if bw is not None:
        lines.append(f"  bandwidth per node: local {_v(bw.local)} GB/s, remote {_v(bw.remote)} GB/s "
                     f"({bw.kind}; {bw.source})")
    if warnings:
        for f in check(p):
            lines.append(f"  {f.severity}: [{f.code}] {f.message}")
    return "\n".join(lines)
