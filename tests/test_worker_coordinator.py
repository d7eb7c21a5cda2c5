"""Coordinator without Ray (LocalExecutor): planning on simulated profiles, resume identity,
and an external sweep-bench binary measured end to end into the store."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hostprofiles import load_profile
from orchestrator.coordinator import run_sweep
from orchestrator.jobs import HostInfo
from orchestrator.local_backend import LocalExecutor
from orchestrator.plan import ModelRef, plan_jobs, plan_slots
from orchestrator.spec import SpecError, SweepSpec
from orchestrator.store import Store

FAKE = str(Path(__file__).parent / "fixtures" / "fake_sweep_bench.py")


def sim_host(name: str) -> HostInfo:
    return HostInfo(key=name, profile=load_profile(name), labels={}, simulated=True, real_cpus=(0, 1),
                    real_nodes=(0,))


def test_simulated_snc3_slots_map_onto_real_cpus():
    spec = SweepSpec.from_dict({"sweep": {"threads": [43]}})
    slots = plan_slots(sim_host("xeon-6980p-2s-snc3"), spec)
    assert [s.name for s in slots] == [f"node{i}" for i in range(6)]
    assert [len(s.placement["cpus"]) for s in slots] == [43, 43, 42, 43, 43, 42]
    assert all(s.cpus == (0, 1) and s.mem_nodes == (0,) and s.threads == 2 and s.simulated for s in slots)
    assert slots[1].placement["mem_nodes"] == [1] and slots[1].placement["real_mem_nodes"] == [0]
    # 43 threads fit a 43-core node; they are checked against the simulated host, not this VM.
    jobs = plan_jobs(spec, sim_host("xeon-6980p-2s-snc3"), slots[0], [ModelRef("/m.gguf", "m")], 0)
    assert jobs[0].threads == 43 and jobs[0].point_settings()["threads"] == 43
    with pytest.raises(SpecError, match=r"sweep.threads = 43 is impossible on slot node2 .*\(allowed: 1\.\.42\)"):
        plan_jobs(spec, sim_host("xeon-6980p-2s-snc3"), slots[2], [ModelRef("/m.gguf", "m")], 0)


def test_external_backend_through_coordinator_and_resume_is_noop(tmp_path):
    argv = [sys.executable, FAKE, "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "-n", "{tg}", "-t", "{threads}",
            "-tb", "{threads_batch}", "-ctk", "{type_k}", "{fa}"]
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    spec = SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "model": {"path": "m.gguf"},
                                "backend": {"kind": "external", "argv": argv},
                                "sweep": {"c": 1024, "ub": 256, "tg": 16, "threads": [1, 2]}}, base=tmp_path)
    lines = []
    with Store.open(spec.store) as store:
        res = run_sweep(spec, LocalExecutor(), store, progress=lines.append)
        assert res.status == "ok" and res.stored == 8
        again = run_sweep(spec, LocalExecutor(), store, run_id=res.run_id)
        assert again.expected == 0 and again.status == "ok" and store.count_points(res.run_id) == 8
        pts = store.points(res.run_id)
    assert {p["settings"]["threads"] for p in pts} == {1, 2}
    assert {p["settings"]["model"] for p in pts} == {"m.gguf"}
    assert all(p["tg"] == 16 and p["verified_cpus"] for p in pts)
    assert lines[-1].startswith(f"run {res.run_id}: ok, 8 point(s)")


def test_no_matching_host_is_a_spec_error_and_the_store_is_never_created(tmp_path):
    spec = SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "hosts": {"profiles": ["nowhere"]},
                                "backend": {"kind": "replay"}})
    with pytest.raises(SpecError, match="no host matches"):
        run_sweep(spec, LocalExecutor(), spec.store)
    assert not os.path.exists(spec.store)


class TwinExecutor(LocalExecutor):
    """Two simulated nodes with the same saved profile (a fleet of identical machines)."""

    def hosts(self):
        return [HostInfo(key=k, profile=load_profile("dev-vm"), labels={}, simulated=True, real_cpus=(0,),
                         real_nodes=(0,)) for k in ("aaaaaaaa1", "bbbbbbbb2")]


def test_identical_hosts_keep_their_own_points(tmp_path):
    spec = SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "backend": {"kind": "replay"},
                                "sweep": {"c": 512, "ub": 256}})
    with Store.open(spec.store) as store:
        res = run_sweep(spec, TwinExecutor(), store)
        pts = store.points(res.run_id)
        hosts = store.hosts()
    assert res.status == "ok" and len(pts) == 4  # 2 hosts x 2 rows, none taken for a duplicate
    assert sorted(h["name"] for h in hosts) == ["dev-vm@aaaaaaaa", "dev-vm@bbbbbbbb"]
    assert len({p["host_id"] for p in pts}) == 2
