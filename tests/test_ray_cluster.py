"""Simulated multi-host cluster (ray.cluster_utils.Cluster): each node carries a saved host
profile (by node label, or a fake sysfs root in its env); rows are flagged simulated and
pinned onto this machine's real CPUs; a host that leaves mid-run makes the run partial."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

for _k, _v in (("RAY_AUTH_MODE", "disabled"), ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
               ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from hostprofiles import load_profile, materialize  # noqa: E402
from hostprofiles.cpulist import parse_cpulist  # noqa: E402
from orchestrator import ray_backend  # noqa: E402
from orchestrator.coordinator import run_sweep  # noqa: E402
from orchestrator.spec import SweepSpec  # noqa: E402
from orchestrator.store import Store  # noqa: E402

pytestmark = pytest.mark.ray
LABEL = ray_backend.PROFILE_LABEL


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="nsw-c-")
    os.makedirs(os.path.join(tmp, "ray"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp  # Cluster writes its address file here, not in the shared /tmp/ray
    sim_root = materialize(load_profile("threadripper-pro-5975wx"), os.path.join(tmp, "tr-sysfs"))
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, object_store_memory=80 * 2**20, include_dashboard=False, temp_dir=os.path.join(tmp, "t")))
    c.add_node(num_cpus=16, object_store_memory=80 * 2**20, labels={LABEL: "ryzen9-7950x", "group": "a"})
    c.add_node(num_cpus=192, object_store_memory=80 * 2**20, labels={LABEL: "epyc-9654-2s-nps1", "group": "a"})
    c.add_node(num_cpus=32, object_store_memory=80 * 2**20, labels={"group": "a"},
               env_vars={ray_backend.SIM_ROOT_ENV: str(sim_root)})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old


def spec(tmp_path, group, delay=0.0, c=512):
    return SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "hosts": {"labels": {"group": group}},
                                "backend": {"kind": "replay", "delay_s": delay},
                                "sweep": {"c": c, "ub": 256, "tg": 32}})


def test_simulated_hosts_flagged_and_mapped_onto_real_cpus(cluster, tmp_path):
    s = spec(tmp_path, "a", delay=0.02)
    with Store.open(s.store) as store:
        ex = ray_backend.RayExecutor()
        try:
            res = run_sweep(s, ex, store)
        finally:
            ex.close()
        pts = store.points(res.run_id)
        hosts = {h["name"]: h for h in store.hosts()}
    assert res.status == "ok", res.note
    # ryzen: 1 node slot, epyc NPS1: 2, threadripper (fake sysfs root): 1; 2 rows each.
    slots = {(p["host_name"], p["slot"]) for p in pts}
    assert slots == {("ryzen9-7950x", "node0"), ("epyc-9654-2s-nps1", "node0"), ("epyc-9654-2s-nps1", "node1"),
                     ("threadripper-pro-5975wx", "node0")}
    assert len(pts) == 8 and all(p["simulated"] for p in pts)
    assert all(hosts[n]["simulated"] for n in ("ryzen9-7950x", "epyc-9654-2s-nps1", "threadripper-pro-5975wx"))
    real = set(os.sched_getaffinity(0))
    for p in pts:
        pl = p["placement"]
        assert len(pl["cpus"]) == {"ryzen9-7950x": 16, "epyc-9654-2s-nps1": 96,
                                   "threadripper-pro-5975wx": 32}[p["host_name"]]
        assert set(parse_cpulist(p["verified_cpus"])) == set(pl["real_cpus"]) <= real
        assert p["settings"]["threads"] == len(pl["cpus"])  # the simulated host's threads are recorded


def test_lost_host_makes_run_partial_listing_missing_points(cluster, tmp_path):
    keep = cluster.add_node(num_cpus=16, object_store_memory=80 * 2**20, labels={LABEL: "ryzen9-7950x", "group": "b"})
    doomed = cluster.add_node(num_cpus=32, object_store_memory=80 * 2**20,
                              labels={LABEL: "threadripper-pro-5975wx", "group": "b"})
    s = spec(tmp_path, "b", delay=0.25, c=2048)  # 8 rows per slot
    with Store.open(s.store) as store:
        def remove_when_started():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(p["host_name"] == "threadripper-pro-5975wx" for p in store.points()):
                    cluster.remove_node(doomed)
                    return
                time.sleep(0.05)
        t = threading.Thread(target=remove_when_started, daemon=True)
        t.start()
        ex = ray_backend.RayExecutor()
        try:
            res = run_sweep(s, ex, store)
        finally:
            ex.close()
        t.join()
        pts = store.points(res.run_id)
        run = store.run(res.run_id)
    cluster.remove_node(keep)
    by_host = {}
    for p in pts:
        by_host.setdefault(p["host_name"], []).append(p)
    assert len(by_host["ryzen9-7950x"]) == 8  # the surviving host finished
    lost = len(by_host.get("threadripper-pro-5975wx", []))
    assert 1 <= lost < 8
    assert res.status == run["status"] == "partial"
    assert f"missing {8 - lost} point(s)" in run["note"] and "threadripper-pro-5975wx/node0" in run["note"]
    assert "lost" in run["note"]
