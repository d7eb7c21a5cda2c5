"""detect() on hand-written fake sysfs trees: real kernel formats, missing files, odd hosts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostprofiles import ProfileError, detect, format_cpulist, parse_cpulist
from hostprofiles.detection import EXTRA_FACTS


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def small_host(root: Path) -> Path:
    """1 socket, 4 cores, SMT2 (siblings +4), 2 L3 groups, 1 node: like a small Ryzen."""
    cpu = "sys/devices/system/cpu"
    put(root, f"{cpu}/online", "0-7")
    for i in range(8):
        core = i % 4
        put(root, f"{cpu}/cpu{i}/topology/physical_package_id", "0")
        put(root, f"{cpu}/cpu{i}/topology/die_id", "0")
        put(root, f"{cpu}/cpu{i}/topology/core_cpus_list", f"{core},{core + 4}")
        put(root, f"{cpu}/cpu{i}/cache/index3/shared_cpu_list", "0-1,4-5" if core < 2 else "2-3,6-7")
        put(root, f"{cpu}/cpu{i}/cpufreq/scaling_governor", "performance")
    put(root, "sys/devices/system/node/node0/cpulist", "0-7")
    put(root, "sys/devices/system/node/node0/distance", "10")
    put(root, "sys/devices/system/node/node0/meminfo",
        "Node 0 MemTotal:       16384 kB\nNode 0 MemFree:        1024 kB")
    put(root, "sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never")
    put(root, "sys/kernel/mm/transparent_hugepage/defrag", "always defer [defer+madvise] madvise never")
    put(root, "proc/sys/kernel/numa_balancing", "1")
    put(root, "proc/sys/kernel/osrelease", "6.8.0-test")
    put(root, "proc/sys/kernel/hostname", "smallbox")
    put(root, "proc/meminfo", "MemTotal:       32768 kB\nMemFree:  1 kB")
    put(root, "proc/cpuinfo", "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: Test CPU 4-Core\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu")
    return root


def test_cpulist_parse_and_format_roundtrip():
    assert parse_cpulist("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpulist("") == ()
    assert format_cpulist([11, 10, 8, 3, 2, 1, 0]) == "0-3,8,10-11"
    with pytest.raises(ProfileError, match="bad CPU list"):
        parse_cpulist("0-x")


def test_detect_reads_topology_tuning_and_identity(tmp_path):
    p = detect(small_host(tmp_path))
    assert p.name == "smallbox" and p.simulated
    assert len(p.cpus) == 8 and p.cores == 4 and p.smt and p.threads_per_core == 2
    assert p.cpu_by_id[5].core_cpus == (1, 5) and p.cpu_by_id[5].core == 1 and not p.cpu_by_id[5].primary
    assert p.l3_groups == ((0, 1, 4, 5), (2, 3, 6, 7))
    assert p.die_groups == p.l3_groups
    assert [c.node for c in p.cpus] == [0] * 8
    assert p.nodes[0].mem_total_bytes == 16384 * 1024 and p.nodes[0].distances == (10,)
    assert p.mem_total_bytes == 32768 * 1024
    assert (p.thp_enabled, p.thp_defrag, p.numa_balancing) == ("madvise", "defer+madvise", 1)
    assert p.governor == "performance" and p.epp is None and p.boost is None
    assert p.kernel == "6.8.0-test" and p.platform_profile is None
    assert p.cpu_vendor == "AuthenticAMD" and p.cpu_model == "Test CPU 4-Core"
    assert p.isa["avx512_vnni"] and not p.isa["amx"]
    assert p.sockets == 1 and p.nodes_per_socket == 1 and p.numa_mode == "NPS1"


def test_empty_root_gives_nulls_not_errors(tmp_path):
    p = detect(tmp_path)
    assert p.cpus == () and p.nodes == () and p.cpu_model is None and p.cpu_flags == ()
    assert p.thp_enabled is None and p.numa_balancing is None and p.kernel is None
    assert p.mem_total_bytes is None and p.numa_mode.startswith("unknown")


def test_partial_tree_offline_cpu_and_garbage(tmp_path):
    root = small_host(tmp_path)
    cpu = "sys/devices/system/cpu"
    put(root, f"{cpu}/online", "0-6")  # cpu7 offline: its directory stays, topology goes
    for f in ("physical_package_id", "die_id", "core_cpus_list"):
        (root / f"{cpu}/cpu7/topology/{f}").unlink()
    put(root, f"{cpu}/cpu1/topology/die_id", "not-a-number")
    (root / f"{cpu}/cpu2/cache/index3/shared_cpu_list").unlink()
    put(root, f"{cpu}/cpu3/cpufreq/scaling_governor", "powersave")
    put(root, "proc/sys/kernel/numa_balancing", "")
    p = detect(root)
    assert p.cpu_ids == tuple(range(7))
    assert p.cpu_by_id[1].die is None and p.cpu_by_id[2].l3 is None
    assert p.governor == "performance,powersave"
    assert p.numa_balancing is None


def test_intel_no_turbo_and_platform_profile(tmp_path):
    root = small_host(tmp_path)
    put(root, "sys/devices/system/cpu/intel_pstate/no_turbo", "1")
    put(root, "sys/firmware/acpi/platform_profile", "balanced")
    p = detect(root)
    assert p.boost is False and p.platform_profile == "balanced"
    put(root, "sys/devices/system/cpu/cpufreq/boost", "1")  # cpufreq/boost wins when present
    assert detect(root).boost is True


def test_memory_only_node(tmp_path):
    root = small_host(tmp_path)
    put(root, "sys/devices/system/node/node1/cpulist", "")
    put(root, "sys/devices/system/node/node1/meminfo", "Node 1 MemTotal:       8192 kB")
    p = detect(root)
    assert [n.id for n in p.nodes] == [0, 1] and p.nodes[1].cpus == ()
    assert p.nodes_per_socket == 1  # CXL-style memory-only nodes don't change SNC/NPS mode


def test_bad_root_and_bad_extra_facts_are_one_line_errors(tmp_path):
    with pytest.raises(ProfileError, match="not a directory"):
        detect(tmp_path / "nope")
    put(tmp_path, EXTRA_FACTS, "{not json")
    with pytest.raises(ProfileError, match="host facts file"):
        detect(tmp_path)


def test_detect_live_root_is_not_simulated():
    p = detect("/")
    assert not p.simulated
    assert len(p.cpus) >= 1 and p.mem_total_bytes and p.mem_total_bytes > 0
    if hasattr(os, "sched_getaffinity") and Path("/sys/devices/system/cpu/online").exists():
        online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
        assert p.cpu_ids == online


def test_hostprofiles_imports_no_orchestrator_engine_ray_or_numba(tmp_path):
    import subprocess
    import sys

    code = ("import sys, hostprofiles; hostprofiles.detect(sys.argv[1]); hostprofiles.list_profiles(); "
            "bad = [m for m in ('orchestrator', 'engine', 'ray', 'numba') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
