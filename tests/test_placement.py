"""plan(): pinned slots on every saved profile, incl. interleaved Genoa and 43+43+42 dies."""
from __future__ import annotations

import dataclasses

import pytest

from hostprofiles import PlacementError, detect, list_profiles, load_profile
from hostprofiles.saved import SHIPPED_DIR
from orchestrator.placement import Placement, plan

NAMES = list_profiles([SHIPPED_DIR])


def prof(name):
    return load_profile(name, [SHIPPED_DIR])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("policy", ["per-node", "per-socket", "per-die", "whole-host"])
def test_slots_partition_the_host(name, policy):
    p = prof(name)
    for smt in (False, True):
        slots = plan(p, policy, smt=smt)
        used = [c for s in slots for c in s.cpus]
        assert len(used) == len(set(used)), "slots overlap"
        want = {c.id for c in p.cpus if smt or c.primary}
        assert set(used) == want
        for s in slots:
            assert s.threads == len(s.cpus)
            primaries = [c for c in s.cpus if p.cpu_by_id[c].primary]
            # physical cores first, then siblings
            assert list(s.cpus[:len(primaries)]) == primaries
            if s.numa_node is not None:
                assert all(p.cpu_by_id[c].node == s.numa_node for c in s.cpus)


@pytest.mark.parametrize("name", NAMES)
def test_per_node_binds_local_memory_and_caps_threads(name):
    p = prof(name)
    slots = plan(p, "per-node", threads=2)
    assert [s.name for s in slots] == [f"node{n.id}" for n in p.nodes]
    for s, n in zip(slots, p.nodes):
        assert s.mem_policy == "bind" and s.mem_nodes == (n.id,) and s.numa_node == n.id
        assert len(s.cpus) == 2 and set(s.cpus) <= set(n.cpus)
        assert s.numactl_args() == [f"--physcpubind={s.cpulist}", f"--membind={n.id}"]
    # One thread count for every slot: it must fit the smallest node (42-core dies on SNC3).
    cores = {n.id: len({p.cpu_by_id[c].core for c in n.cpus}) for n in p.nodes}
    small = min(cores, key=lambda n: (cores[n], n))
    with pytest.raises(PlacementError,
                       match=rf"threads={cores[small] + 1} is more than slot node{small} .* {cores[small]} cores"):
        plan(p, "per-node", threads=cores[small] + 1)
    assert {s.threads for s in plan(p, "per-node", threads=cores[small])} == {cores[small]}


def test_smt_siblings_only_when_asked():
    p = prof("xeon-6980p-2s-snc-off")
    node0 = plan(p, "per-node")[0]
    assert node0.cpus == tuple(range(128)) and not node0.smt
    with pytest.raises(PlacementError, match=r"threads=200 .* 128 cores \(256 with smt=True\)"):
        plan(p, "per-node", threads=200)
    both = plan(p, "per-node", threads=200, smt=True)[0]
    assert both.cpus[:128] == tuple(range(128)) and both.cpus[128:] == tuple(range(256, 328))
    assert plan(p, "per-node", smt=True)[1].cpulist == "128-255,384-511"


def test_xeon_dies_43_43_42_and_seed_placement():
    for name in ("xeon-6980p-2s-snc-off", "xeon-6980p-2s-snc3"):
        dies = plan(prof(name), "per-die")
        assert [s.threads for s in dies] == [43, 43, 42] * 2
        assert [s.cpulist for s in dies[:3]] == ["0-42", "43-85", "86-127"]
        assert [s.socket for s in dies] == [0, 0, 0, 1, 1, 1]
        with pytest.raises(PlacementError, match="slot die2 .* 42 cores"):
            plan(prof(name), "per-die", threads=43)
    # The seed: numactl -N 0 -m 0, 128 threads for PP on SNC off.
    seed = plan(prof("xeon-6980p-2s-snc-off"), "per-node", threads=128)[0]
    assert seed.cpulist == "0-127" and seed.mem_nodes == (0,)
    snc3 = plan(prof("xeon-6980p-2s-snc3"), "per-node")
    assert [s.threads for s in snc3] == [43, 43, 42] * 2 and snc3[5].cpulist == "214-255"
    spread = plan(prof("xeon-6980p-2s-snc-off"), "per-node", threads=6, fill="spread")[0]
    assert spread.cpus == (0, 43, 86, 1, 44, 87)


def test_genoa_interleaved_numbering():
    nps4 = prof("epyc-9654-2s-nps4")
    node0 = plan(nps4, "per-node", threads=8)[0]
    # Compact = one CCD (L3) first, not "ids 0..7" (those are on 8 different CCDs and 3 nodes).
    assert node0.cpus == (0, 12, 24, 36, 48, 60, 72, 84)
    assert len({nps4.cpu_by_id[c].l3 for c in node0.cpus}) == 1
    assert {nps4.cpu_by_id[c].node for c in range(8)} == {0, 1, 2}
    full = plan(nps4, "per-node")
    assert [s.threads for s in full] == [24] * 8
    assert all(nps4.cpu_by_id[c].node == s.numa_node for s in full for c in s.cpus)
    spread = plan(nps4, "per-node", threads=3, fill="spread")[0]
    assert len({nps4.cpu_by_id[c].l3 for c in spread.cpus}) == 3
    nps1 = prof("epyc-9654-2s-nps1")
    ccds = plan(nps1, "per-ccd")
    assert len(ccds) == 24 and ccds[1].cpus == tuple(range(1, 96, 12))
    assert ccds[0].numa_node == 0 and ccds[12].numa_node == 1 and ccds[12].mem_nodes == (1,)


def test_whole_host_memory_policies():
    p = prof("epyc-9654-2s-nps4")
    (inter,) = plan(p, "whole-host")
    assert inter.mem_policy == "interleave" and inter.mem_nodes == tuple(range(8))
    assert inter.numactl_args()[1] == "--interleave=0,1,2,3,4,5,6,7"
    assert inter.threads == 192 and inter.numa_node is None and inter.socket is None
    (ft,) = plan(p, "whole-host", mem_policy="first-touch")
    assert ft.mem_policy == "none" and ft.mem_nodes == () and len(ft.numactl_args()) == 1
    (one,) = plan(prof("ryzen9-7950x"), "whole-host")
    assert one.mem_policy == "none"  # one node: nothing to interleave


def test_explicit_cpus():
    p = prof("xeon-6980p-2s-snc-off")
    (s,) = plan(p, "cpus", cpus="0-3,256")
    assert s.cpus == (0, 1, 2, 3, 256) and s.mem_nodes == (0,) and s.socket == 0
    (pref,) = plan(p, "cpus", cpus=[0, 1], mem_policy="preferred")
    assert pref.numactl_args() == ["--physcpubind=0-1", "--preferred=0"]
    with pytest.raises(PlacementError, match="CPU 512 is not on host"):
        plan(p, "cpus", cpus="510-512")
    with pytest.raises(PlacementError, match="needs a CPU list"):
        plan(p, "cpus")
    with pytest.raises(PlacementError, match="goes with policy 'cpus'"):
        plan(p, "per-node", cpus="0")


def test_bad_requests_name_the_problem(tmp_path):
    p = prof("ryzen9-7950x")
    with pytest.raises(PlacementError, match="unknown placement policy 'per-rack'"):
        plan(p, "per-rack")
    with pytest.raises(PlacementError, match="threads must be a positive integer"):
        plan(p, "per-node", threads=0)
    with pytest.raises(PlacementError, match="unknown mem_policy 'spray'"):
        plan(p, "per-node", mem_policy="spray")
    with pytest.raises(PlacementError, match="no NUMA nodes"):
        plan(dataclasses.replace(p, nodes=()), "per-node")
    with pytest.raises(PlacementError, match="lists no CPUs"):
        plan(detect(tmp_path), "whole-host")


def test_placement_json_round_trip():
    for s in plan(prof("epyc-9654-2s-nps4"), "per-node", threads=4, smt=True):
        d = s.to_json()
        assert d["cpulist"] == s.cpulist
        assert Placement.from_json(d) == s


def test_thread_errors_with_smt_and_explicit_lists():
    p = prof("ryzen9-7950x")
    with pytest.raises(PlacementError, match=r"threads=33 .* 32 CPUs \(16 cores with their SMT siblings\)"):
        plan(p, "per-node", threads=33, smt=True)
    with pytest.raises(PlacementError, match=r"threads=5 .* slot cpus .* 4 cores$"):
        plan(p, "cpus", cpus="0-3", threads=5)
    (s,) = plan(p, "cpus", cpus="0,16,1", threads=2)
    assert s.cpus == (0, 1)  # physical cores before the sibling 16


def test_thread_count_types_and_preferred_node():
    p = prof("epyc-9654-2s-nps4")
    assert plan(p, "per-node", threads=2)[0].threads == 2
    for bad in (True, 2.5, "8", -1):
        with pytest.raises(PlacementError, match="threads must be a positive integer"):
            plan(p, "per-node", threads=bad)
    (pref,) = plan(p, "whole-host", mem_policy="preferred")
    assert pref.mem_nodes == (0,) and pref.numactl_args()[1] == "--preferred=0"
