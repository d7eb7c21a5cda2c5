"""materialize(profile, dir): write the fake sysfs/procfs tree detect() reads back.

This is how a 2-socket SNC3 Xeon is tested on a 1-node VM: detect(root=dir) returns
the same profile (with simulated=True). Only the files detect() reads are written,
in the kernel's own formats; a None field leaves its file out, as on a real VM.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .cpulist import format_cpulist
from .detection import EXTRA_FACTS
from .errors import ProfileError
from .profile import HostProfile

# The choices the kernel offers in these files; the active one is [bracketed].
_THP_ENABLED = ("always", "madvise", "never")
_THP_DEFRAG = ("always", "defer", "defer+madvise", "madvise", "never")


def _bracket(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        return f"[{value}]"
    return " ".join(f"[{c}]" if c == value else c for c in choices)


class _Tree:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, rel: str, value: object | None) -> None:
        if value is None:
            return
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")


def materialize(profile: HostProfile, dir: str | os.PathLike) -> Path:
    """Write ``profile`` as a sysfs/procfs tree under ``dir`` (new or empty)."""
    root = Path(dir)
    # Leftovers of another host (extra cpuN/ or nodeN/ dirs) would be detected too.
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ProfileError(f"materialize: {root} is not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    t = _Tree(root)
    cpu_dir = "sys/devices/system/cpu"
    node_dir = "sys/devices/system/node"

    ids = profile.cpu_ids
    for name in ("online", "present", "possible"):
        t.write(f"{cpu_dir}/{name}", format_cpulist(ids))
    l3_groups = profile.l3_groups
    for c in profile.cpus:
        d = f"{cpu_dir}/cpu{c.id}"
        t.write(f"{d}/topology/physical_package_id", c.socket)
        t.write(f"{d}/topology/die_id", c.die)
        t.write(f"{d}/topology/core_cpus_list", format_cpulist(c.core_cpus))
        t.write(f"{d}/topology/thread_siblings_list", format_cpulist(c.core_cpus))
        if c.l3 is not None:
            t.write(f"{d}/cache/index3/level", 3)
            t.write(f"{d}/cache/index3/shared_cpu_list", format_cpulist(l3_groups[c.l3]))
        t.write(f"{d}/cpufreq/scaling_governor", profile.governor)
        t.write(f"{d}/cpufreq/energy_performance_preference", profile.epp)
        t.write(f"{d}/cpufreq/scaling_driver", profile.cpufreq_driver)
    if profile.boost is not None:
        t.write(f"{cpu_dir}/cpufreq/boost", int(profile.boost))

    if profile.nodes:
        t.write(f"{node_dir}/online", format_cpulist(n.id for n in profile.nodes))
        t.write(f"{node_dir}/possible", format_cpulist(n.id for n in profile.nodes))
    for n in profile.nodes:
        d = f"{node_dir}/node{n.id}"
        # Written even when empty: memory-only nodes have an empty cpulist.
        (root / d).mkdir(parents=True, exist_ok=True)
        t.write(f"{d}/cpulist", format_cpulist(n.cpus))
        if n.distances:
            t.write(f"{d}/distance", " ".join(map(str, n.distances)))
        if n.mem_total_bytes is not None:
            t.write(f"{d}/meminfo", f"Node {n.id} MemTotal:       {n.mem_total_bytes // 1024} kB")

    thp = "sys/kernel/mm/transparent_hugepage"
    if profile.thp_enabled is not None:
        t.write(f"{thp}/enabled", _bracket(profile.thp_enabled, _THP_ENABLED))
    if profile.thp_defrag is not None:
        t.write(f"{thp}/defrag", _bracket(profile.thp_defrag, _THP_DEFRAG))
    t.write("proc/sys/kernel/numa_balancing", profile.numa_balancing)
    t.write("proc/sys/kernel/osrelease", profile.kernel)
    t.write("proc/sys/kernel/hostname", profile.name)
    t.write("sys/firmware/acpi/platform_profile", profile.platform_profile)
    if profile.mem_total_bytes is not None:
        t.write("proc/meminfo", f"MemTotal:       {profile.mem_total_bytes // 1024} kB")
    t.write("proc/cpuinfo", _cpuinfo(profile))

    extra = {
        "mem_bandwidth_gbs": dataclasses.asdict(profile.mem_bandwidth_gbs) if profile.mem_bandwidth_gbs else None,
        "notes": list(profile.notes),
    }
    if extra["mem_bandwidth_gbs"] or extra["notes"]:
        t.write(EXTRA_FACTS, json.dumps(extra, indent=2))
    return root


def _cpuinfo(p: HostProfile) -> str | None:
    if p.cpu_model is None and p.cpu_vendor is None and not p.cpu_flags:
        return None
    lines = []
    for c in p.cpus:
        block = [f"processor\t: {c.id}"]
        if p.cpu_vendor is not None:
            block.append(f"vendor_id\t: {p.cpu_vendor}")
        if p.cpu_model is not None:
            block.append(f"model name\t: {p.cpu_model}")
        if c.socket is not None:
            block.append(f"physical id\t: {c.socket}")
        block.append(f"flags\t\t: {' '.join(p.cpu_flags)}")
        lines.append("\n".join(block))
    return "\n\n".join(lines)
