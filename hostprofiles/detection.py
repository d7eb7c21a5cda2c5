"""detect(root) -> HostProfile, from sysfs/procfs files under ``root``.

Every file is optional: VMs and containers lack cpufreq, platform_profile, even the
node directory. A missing or unreadable file becomes None, never an exception.
(The one exception: a malformed etc/numasweep/host.json, which a person wrote.)
psutil and py-cpuinfo describe the running machine, so they are used only when
root is the real "/"; any other root is read purely from its files. materialize()
writes their values into proc/meminfo and proc/cpuinfo, so a live detection
round-trips too: only `simulated` (profile.REAL_ROOT_ONLY_FIELDS) differs.
"""
from __future__ import annotations

import json
import os
import re
import socket as _socket
from pathlib import Path

from .cpulist import parse_cpulist
from .errors import ProfileError
from .profile import Cpu, HostProfile, MemBandwidth, Node

# Facts no kernel file holds (measured bandwidth, notes): an operator (or
# materialize) may put them here under the root.
EXTRA_FACTS = "etc/numasweep/host.json"

_CPU_DIR = re.compile(r"cpu(\d+)$")
_NODE_DIR = re.compile(r"node(\d+)$")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_cpulist(path: Path) -> tuple[int, ...] | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return parse_cpulist(text)
    except ProfileError:
        return None


def _bracketed(text: str | None) -> str | None:
    """'always [madvise] never' -> 'madvise' (the kernel marks the active choice)."""
    if text is None:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else (text or None)


def _numbered(parent: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := pattern.match(p.name))]
    return sorted(found)


def _one_value(values: list[str | None]) -> str | None:
    """Common value of a per-CPU setting; 'a,b' when CPUs differ; None if none readable."""
    seen = sorted({v for v in values if v})
    return ",".join(seen) if seen else None


def _nodes(root: Path) -> tuple[Node, ...]:
    nodes = []
    for nid, path in _numbered(root / "sys/devices/system/node", _NODE_DIR):
        mem = None
        meminfo = _read(path / "meminfo")
        if meminfo:
            m = re.search(r"MemTotal:\s+(\d+)\s*kB", meminfo)
            mem = int(m.group(1)) * 1024 if m else None
        dist = _read(path / "distance")
        try:
            distances = tuple(int(x) for x in dist.split()) if dist else ()
        except ValueError:
            distances = ()
        nodes.append(Node(id=nid, cpus=_read_cpulist(path / "cpulist") or (),
                          mem_total_bytes=mem, distances=distances))
    return tuple(nodes)


def _cpus(root: Path, nodes: tuple[Node, ...]) -> tuple[Cpu, ...]:
    base = root / "sys/devices/system/cpu"
    dirs = dict(_numbered(base, _CPU_DIR))
    online = _read_cpulist(base / "online")
    # Offline CPUs keep their directory but lose topology/: count only online ones.
    ids = sorted(set(online) & set(dirs)) if online is not None and dirs else sorted(dirs or (online or ()))
    node_of = {cpu: n.id for n in nodes for cpu in n.cpus}
    l3_sets: dict[int, tuple[int, ...]] = {}
    raw = []
    for i in ids:
        d = dirs.get(i, base / f"cpu{i}")
        topo = d / "topology"
        siblings = _read_cpulist(topo / "core_cpus_list") or _read_cpulist(topo / "thread_siblings_list")
        l3 = _read_cpulist(d / "cache/index3/shared_cpu_list")
        if l3:
            l3_sets[i] = l3
        raw.append((i, _read_int(topo / "physical_package_id"), _read_int(topo / "die_id"),
                    siblings or (i,)))
    # L3 groups are numbered by their first CPU, so the index is the same from any root.
    firsts = sorted({s[0] for s in l3_sets.values()})
    index = {first: k for k, first in enumerate(firsts)}
    return tuple(
        Cpu(id=i, socket=sock, die=die, core_cpus=sib,
            l3=index[l3_sets[i][0]] if i in l3_sets else None, node=node_of.get(i))
        for i, sock, die, sib in raw
    )


def _cpuinfo_file(root: Path) -> tuple[str | None, str | None, tuple[str, ...]]:
    text = _read(root / "proc/cpuinfo") or ""
    first = text.split("\n\n", 1)[0]
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()) if _
    )
    flags = tuple(sorted(set(fields.get("flags", "").split())))
    return fields.get("vendor_id"), fields.get("model name"), flags


def _cpuinfo_live() -> tuple[str | None, str | None, tuple[str, ...]]:
    try:
        import cpuinfo  # py-cpuinfo: brand + flags, including ones only CPUID shows

        info = cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - py-cpuinfo can fail in odd sandboxes; fall back
        return _cpuinfo_file(Path("/"))
    return info.get("vendor_id_raw"), info.get("brand_raw"), tuple(sorted(set(info.get("flags", ()))))


def _mem_total(root: Path, live: bool) -> int | None:
    if live:
        try:
            import psutil

            return int(psutil.virtual_memory().total)
        except Exception:  # noqa: BLE001
            pass
    m = re.search(r"MemTotal:\s+(\d+)\s*kB", _read(root / "proc/meminfo") or "")
    return int(m.group(1)) * 1024 if m else None


def _boost(root: Path) -> bool | None:
    cpu = root / "sys/devices/system/cpu"
    boost = _read_int(cpu / "cpufreq/boost")
    if boost is not None:
        return boost == 1
    no_turbo = _read_int(cpu / "intel_pstate/no_turbo")
    return None if no_turbo is None else no_turbo == 0


def _extra(root: Path) -> tuple[MemBandwidth | None, tuple[str, ...]]:
    text = _read(root / EXTRA_FACTS)
    if not text:
        return None, ()
    try:
        data = json.loads(text)
        bw = data.get("mem_bandwidth_gbs")
        return (MemBandwidth(**bw) if bw else None), tuple(data.get("notes", ()))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProfileError(f"{root / EXTRA_FACTS}: not a valid host facts file: {exc}") from None


def detect(root: str | os.PathLike = "/") -> HostProfile:
    """Describe the host whose sysfs/procfs is under ``root`` ("/" = this machine)."""
    base = Path(root)
    if not base.is_dir():
        raise ProfileError(f"host root {str(root)!r} is not a directory")
    live = base.resolve() == Path("/")
    nodes = _nodes(base)
    cpus = _cpus(base, nodes)
    vendor, model, flags = _cpuinfo_live() if live else _cpuinfo_file(base)
    cpufreq = [base / f"sys/devices/system/cpu/cpu{c.id}/cpufreq" for c in cpus]
    bandwidth, notes = _extra(base)
    name = _read(base / "proc/sys/kernel/hostname") or (_socket.gethostname() if live else "unnamed")
    return HostProfile(
        name=name,
        cpus=cpus,
        nodes=nodes,
        cpu_vendor=vendor,
        cpu_model=model,
        cpu_flags=flags,
        mem_total_bytes=_mem_total(base, live),
        thp_enabled=_bracketed(_read(base / "sys/kernel/mm/transparent_hugepage/enabled")),
        thp_defrag=_bracketed(_read(base / "sys/kernel/mm/transparent_hugepage/defrag")),
        numa_balancing=_read_int(base / "proc/sys/kernel/numa_balancing"),
        governor=_one_value([_read(d / "scaling_governor") for d in cpufreq]),
        epp=_one_value([_read(d / "energy_performance_preference") for d in cpufreq]),
        cpufreq_driver=_one_value([_read(d / "scaling_driver") for d in cpufreq]),
        boost=_boost(base),
        platform_profile=_read(base / "sys/firmware/acpi/platform_profile"),
        kernel=_read(base / "proc/sys/kernel/osrelease"),
        mem_bandwidth_gbs=bandwidth,
        notes=notes,
        simulated=not live,
    )
