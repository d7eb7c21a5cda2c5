"""check(profile, placement, model_bytes): what a benchmarker must know before a run.

Read-only by design (pyperf's show vs write): it reports, it never tunes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .profile import GIB, HostProfile


@dataclass(frozen=True)
class Finding:
    code: str  # stable, e.g. "numa-balancing-on"
    message: str  # one line for humans
    severity: str = "warning"  # "warning" (fix or accept before comparing) or "info"


def check(profile: HostProfile, placement: Any = None, model_bytes: int | None = None) -> list[Finding]:
    """Warnings for this host, a placement on it (duck-typed: .name, .cpus,
    .mem_nodes, .mem_policy) and a model of ``model_bytes``."""
    out: list[Finding] = []
    p = profile
    if p.simulated:
        out.append(Finding("simulated", f"profile {p.name!r} is simulated: results are not this host's", "info"))
    if p.numa_balancing:
        out.append(Finding("numa-balancing-on", f"numa_balancing={p.numa_balancing}: the kernel migrates "
                           "pages during the run (echo 0 > /proc/sys/kernel/numa_balancing)"))
    if p.governor is not None and p.governor != "performance":
        out.append(Finding("governor-not-performance", f"cpufreq governor is {p.governor!r}, not 'performance'"))
    if p.epp is not None and p.epp != "performance":
        out.append(Finding("epp-not-performance", f"energy_performance_preference is {p.epp!r}, not 'performance'"))
    if p.platform_profile is not None and p.platform_profile != "performance":
        out.append(Finding("platform-profile", f"ACPI platform_profile is {p.platform_profile!r}, not 'performance'"))
    if p.thp_enabled is not None:
        # No right answer: THP moved TG +12% on a 6980P and -20% on a 5975WX.
        out.append(Finding("thp-mode", f"THP enabled={p.thp_enabled} defrag={p.thp_defrag}: changes speed "
                           "either way per host; keep it equal across compared runs", "info"))
    unknown = [k for k in ("thp_enabled", "numa_balancing", "governor", "boost") if getattr(p, k) is None]
    if unknown:
        out.append(Finding("tuning-unknown", f"not readable on this host: {', '.join(unknown)}", "info"))
    if not p.nodes:
        out.append(Finding("numa-unknown", "no NUMA node information (no sys/devices/system/node)", "info"))
    if placement is not None:
        out.extend(_check_placement(p, placement))
    if model_bytes is not None:
        out.extend(_check_memory(p, placement, model_bytes))
    return out


def _check_placement(p: HostProfile, pl: Any) -> list[Finding]:
    out = []
    name = getattr(pl, "name", "placement")
    missing = [c for c in pl.cpus if c not in p.cpu_by_id]
    if missing:
        out.append(Finding("cpu-not-on-host", f"{name}: CPUs {missing[:8]} are not on host {p.name!r}"))
    cpus = [p.cpu_by_id[c] for c in pl.cpus if c in p.cpu_by_id]
    per_core = Counter(c.core for c in cpus)
    shared = sorted(core for core, n in per_core.items() if n > 1)
    if shared:
        pair = sorted(c.id for c in cpus if c.core == shared[0])
        out.append(Finding("smt-siblings", f"{name}: {len(shared)} core(s) run two threads (SMT siblings, "
                           f"e.g. CPUs {','.join(map(str, pair))}); speeds are not per-core"))
    cpu_nodes = sorted({c.node for c in cpus if c.node is not None})
    if pl.mem_policy == "bind" and cpu_nodes and not set(cpu_nodes) & set(pl.mem_nodes):
        out.append(Finding("remote-memory", f"{name}: CPUs on node(s) {cpu_nodes} but memory bound to "
                           f"{list(pl.mem_nodes)}"))
    if len(cpu_nodes) > 1 and pl.mem_policy == "bind":
        out.append(Finding("spans-nodes", f"{name}: CPUs span nodes {cpu_nodes}; some threads read remote memory"))
    return out


def _check_memory(p: HostProfile, pl: Any, model_bytes: int) -> list[Finding]:
    out = []
    gib = model_bytes / GIB
    if p.mem_total_bytes is not None and model_bytes > p.mem_total_bytes:
        out.append(Finding("model-exceeds-host-memory",
                           f"model needs {gib:.1f} GiB, host has {p.mem_total_bytes / GIB:.1f} GiB"))
    if pl is not None and pl.mem_policy in ("bind", "interleave") and pl.mem_nodes:
        sizes = [p.node_by_id[n].mem_total_bytes for n in pl.mem_nodes if n in p.node_by_id]
        if sizes and None not in sizes and model_bytes > sum(sizes):
            out.append(Finding("model-exceeds-node-memory", f"{pl.name}: model needs {gib:.1f} GiB, memory "
                               f"nodes {list(pl.mem_nodes)} have {sum(sizes) / GIB:.1f} GiB"))
    elif pl is None:
        small = [n for n in p.nodes if n.mem_total_bytes is not None and n.cpus and model_bytes > n.mem_total_bytes]
        if small:
            out.append(Finding("model-exceeds-node-memory", f"model needs {gib:.1f} GiB, more than node(s) "
                               f"{[n.id for n in small]} hold ({small[0].mem_total_bytes / GIB:.1f} GiB): "
                               "a per-node slot would spill to remote memory"))
    return out
