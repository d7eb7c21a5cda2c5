"""The fleet's parts without starting a fleet: subnet choice, housekeeping plans, the state file, token
lookup, model identity (hash cache, references, the exclusion line), the CPU guard through the
coordinator, a coordinator outside a cluster refused at once, and the CLI's user errors."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from hostprofiles import load_profile
from orchestrator import cluster_auth, fleet, fleet_state, model_identity, netns
from orchestrator.coordinator import run_sweep
from orchestrator.local_backend import LocalExecutor
from orchestrator.plan import plan_slots
from orchestrator.fleet_state import FleetError, FleetHost, FleetState
from orchestrator.jobs import HostInfo
from orchestrator.spec import SpecError, SweepSpec
from orchestrator.store import Store


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMASWEEP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_subnet_avoids_every_network_in_use():
    used = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("10.77.1.128/25"),
            ipaddress.ip_network("192.168.0.0/16")]
    assert str(netns.pick_subnet(used=used)) == "10.77.2.0/24"
    with pytest.raises(netns.NetnsError, match="no free /24"):
        netns.pick_subnet(used=[ipaddress.ip_network("10.0.0.0/8")])


def test_housekeeping_plans():
    hk, rest, line = fleet.housekeeping_plan("auto", allowed={0, 1})
    assert hk == set() and rest is None and line.startswith("none: 2 CPU(s)")
    hk, rest, line = fleet.housekeeping_plan("auto", allowed=set(range(8)))
    assert hk == {7} and rest == set(range(7)) and "housekeeping CPU(s) 7" in line and "slots use 0-6" in line
    assert fleet.housekeeping_plan("1", allowed={0, 1})[:2] == ({1}, {0})
    assert fleet.housekeeping_plan("none", allowed=set(range(8)))[0] == set()
    for bad in ("0-1", "5", "x"):
        with pytest.raises(FleetError, match="--housekeeping-cpus"):
            fleet.housekeeping_plan(bad, allowed={0, 1})


def test_host_names_are_unique():
    assert fleet.host_names(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]


def _state(tmp_path, name="f1") -> FleetState:
    host = FleetHost(name="ryzen9-7950x", profile="ryzen9-7950x", head=True, address="10.77.3.2",
                     namespace="nsw-abcd-0", veth="nswvabcd0", temp_dir="t", sim_root="s", home="h", log="l",
                     num_cpus=32, ports={"gcs": 6379, "dashboard": 8265, "client": 10001}, pid=123,
                     argv=("ray", "start"), env={"RAY_AUTH_MODE": "token"})
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    return FleetState(name=name, mode="netns", reason=None, workdir=str(tmp_path), token_path=str(token),
                      hosts=(host,), bridge="nswb-abcd", subnet="10.77.3.0/24", gateway="10.77.3.1")


def test_state_file_round_trips_and_finds_a_fleet_by_address(tmp_path, state_dir, monkeypatch):
    st = _state(tmp_path)
    path = fleet_state.save(st)
    assert path == state_dir / "fleets" / "f1.json"
    assert fleet_state.load("f1") == st
    assert st.run_address == "ray://10.77.3.2:10001" and st.gcs_address == "10.77.3.2:6379"
    assert fleet_state.fleet_for_address("http://10.77.3.2:8265/") == st
    assert fleet_state.fleet_for_address("10.77.3.9:6379") is None
    # a client of the fleet's address presents the fleet's token
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env, note = cluster_auth.client_env("ray://10.77.3.2:10001")
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")} and "'f1'" in note
    assert cluster_auth.token("ray://10.77.3.2:10001") == "secret-token"
    assert cluster_auth.token("ray://10.9.9.9:10001") is None  # mode disabled, no fleet: no token
    # a state file of another version is refused, naming the file
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(FleetError, match=r"f1.json: fleet state version 99 is not supported"):
        fleet_state.load("f1")


def test_model_hash_is_cached_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    first = model_identity.file_identity(str(f), cache)
    assert first["size"] == 1000 and first["sha256"] == model_identity.sha256_file(f)
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same path, size and mtime: the cache answers
    assert model_identity.file_identity(str(f), cache)["sha256"] == first["sha256"]
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    assert model_identity.file_identity(str(f), cache)["sha256"] == model_identity.sha256_file(f) != first["sha256"]
    assert "error" in model_identity.file_identity(str(tmp_path / "nope.gguf"), cache)


def test_synthetic_models_live_in_the_hosts_own_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(model_identity.HOME_ENV, raising=False)
    assert model_identity.local_model_path("/a/tiny-seed0.gguf", "tiny", 0) == "/a/tiny-seed0.gguf"
    monkeypatch.setenv(model_identity.HOME_ENV, str(tmp_path))
    assert model_identity.local_model_path("/a/tiny-seed0.gguf", "tiny", 0) == str(tmp_path / "models/tiny-seed0.gguf")
    assert model_identity.local_model_path("/a/x.gguf", None, 0) == "/a/x.gguf"  # a file is where the spec says


def test_compare_against_coordinator_or_majority():
    models = [("/m/a.gguf", "a.gguf", None, 0), ("/m/b.gguf", "b.gguf", None, 0)]
    good_a = {"model": "a.gguf", "path": "/m/a.gguf", "size": 10, "sha256": "aa" * 32}
    good_b = {"model": "b.gguf", "path": "/m/b.gguf", "size": 20, "sha256": "bb" * 32}
    odd_b = {**good_b, "sha256": "cc" * 32, "size": 21}
    missing_a = {"model": "a.gguf", "path": "/m/a.gguf", "error": "No such file or directory"}
    own = {"a.gguf": {"path": "/m/a.gguf", "size": 10, "sha256": "aa" * 32}}  # the coordinator lacks b
    v = model_identity.compare(models, own, {"h1": [good_a, good_b], "h2": [good_a, odd_b],
                                             "h3": [missing_a, good_b]})
    assert v.reference["a.gguf"]["source"] == "coordinator"
    assert v.reference["b.gguf"] == {"sha256": "bb" * 32, "size": 20, "source": "2 of 3 hosts"}
    assert set(v.excluded) == {"h2", "h3"}
    (line,) = v.excluded["h2"]
    assert line == (f"host h2 excluded: model b.gguf at /m/b.gguf: sha256 {'cc' * 32} (21 bytes) differs from "
                    f"{'bb' * 32} (20 bytes, 2 of 3 hosts)")
    assert v.excluded["h3"] == [f"host h3 excluded: model a.gguf at /m/a.gguf: No such file or directory "
                                f"(expected sha256 {'aa' * 32})"]
    assert v.record()["hosts"]["h1"]["b.gguf"]["sha256"] == "bb" * 32


def test_local_executor_checks_model_bytes_and_records_them(tmp_path, micro_model):
    spec = SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "model": {"path": str(micro_model)},
                                "sweep": {"c": 256, "ub": 128, "tg": 4, "threads": 1}})
    with Store.open(spec.store) as store:
        res = run_sweep(spec, LocalExecutor(), store)
        run = store.run(res.run_id)
    ident = run["settings"]["model_identity"]
    digest = model_identity.sha256_file(micro_model)
    assert res.status == "ok" and ident["reference"]["micro.gguf"]["sha256"] == digest
    assert [m["micro.gguf"]["sha256"] for m in ident["hosts"].values()] == [digest] and ident["excluded"] == {}


class _SleepySlot:
    def __init__(self, log, host, events):
        self.log, self.host, self.events = log, host, events

    def run(self, job):
        t0 = time.monotonic()
        time.sleep(0.3)
        self.log.append((self.host, t0, time.monotonic()))
        # rows echo what the job asked for (the k_repack of this job)
        return iter([{"row": {**r, "k_repack": job.settings["k_repack"]}, "verified_cpus": "0-1",
                      "verified_mems": "bind:0", "noise": 0.0, "pid": 1, "build_identity": {"kind": "replay"}}
                     for r in self.events])

    def close(self):
        pass


class SharedCpuExecutor(LocalExecutor):
    """Two simulated hosts pinned onto the same CPUs, on one machine or on two."""

    def __init__(self, machines):
        super().__init__()
        from orchestrator.backends.replay import rows
        self.machines, self.log = machines, []
        settings = SweepSpec.from_dict({"sweep": {"c": 512, "ub": 256, "tg": 32, "threads": 2}}).matrix[0]
        self.rows = list(rows({**settings.as_dict(), "threads_batch": 2}))

    def hosts(self):
        return [HostInfo(key=f"k{i}", profile=load_profile(p), labels={}, simulated=True, real_cpus=(0, 1),
                         real_nodes=(0,), machine=m)
                for i, (p, m) in enumerate(zip(("ryzen9-7950x", "threadripper-pro-5975wx"), self.machines))]

    def open_slot(self, host, slot):
        return _SleepySlot(self.log, host.key, self.rows)


def _overlaps(log) -> bool:
    return any(a[1] < b[2] and b[1] < a[2] for i, a in enumerate(log) for b in log[i + 1:])


@pytest.mark.parametrize("machines,overlap", [(("m", "m"), False), (("m1", "m2"), True)])
def test_simulated_hosts_on_the_same_cpus_take_turns(tmp_path, machines, overlap):
    spec = SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "backend": {"kind": "replay"},
                                "sweep": {"c": 512, "ub": 256, "tg": 32, "k_repack": ["on", "off"]}})
    ex = SharedCpuExecutor(machines)
    with Store.open(spec.store) as store:
        res = run_sweep(spec, ex, store)
    assert res.status == "ok" and len(ex.log) == 4
    assert _overlaps(ex.log) is overlap


def test_housekeeping_cpus_are_left_out_of_a_real_hosts_slots():
    prof = load_profile("ryzen9-7950x")
    host = HostInfo(key="k", profile=prof, labels={}, simulated=False, real_cpus=(), real_nodes=(0,),
                    housekeeping=(0, 16))
    (slot,) = plan_slots(host, SweepSpec.from_dict({"placement": {"policy": "per-node", "smt": True}}))
    assert 0 not in slot.cpus and 16 not in slot.cpus and len(slot.cpus) == 30 and slot.threads == 30
    lone = HostInfo(key="k", profile=prof, labels={}, simulated=False, real_cpus=(), real_nodes=(0,),
                    housekeeping=tuple(range(32)))
    with pytest.raises(SpecError, match="no CPU left outside the housekeeping CPUs"):
        plan_slots(lone, SweepSpec.from_dict({"placement": {"policy": "per-node", "smt": True}}))


def test_coordinator_outside_the_cluster_is_refused_at_once():
    from orchestrator import ray_backend

    (port,) = fleet.free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(ray_backend.ClusterError, match="not a node of that Ray cluster.*submit.*ray://"):
        ray_backend.check_on_node(f"127.0.0.1:{port}")
    with pytest.raises(ray_backend.ClusterError, match="no Ray Client server answers"):
        ray_backend.check_client(f"ray://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 10


def numasweep(*args, env):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_fleet_cli_user_errors(tmp_path):
    env = {**os.environ, "NUMASWEEP_STATE_DIR": str(tmp_path / "state")}
    res = numasweep("fleet", "up", "--simulate", "ryzen9-7950x,no-such-box", env=env)
    assert res.returncode == 2 and "no saved host profile 'no-such-box'" in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "state").exists()  # nothing made
    res = numasweep("fleet", "up", env=env)
    assert res.returncode == 2 and "--simulate needs at least one saved profile" in res.stderr
    res = numasweep("fleet", "status", "--name", "Bad Name", env=env)
    assert res.returncode == 2 and "--name 'Bad Name'" in res.stderr
    res = numasweep("fleet", "status", env=env)
    assert res.returncode == 2 and "no fleet 'default' is up" in res.stderr
    res = numasweep("fleet", "down", env=env)
    assert res.returncode == 0 and "nothing to do" in res.stdout
    res = numasweep("fleet", "up", "--simulate", "dev-vm", "--housekeeping-cpus", "999", env=env)
    assert res.returncode == 2 and "--housekeeping-cpus '999'" in res.stderr
