"""The fleet's fallback where namespaces are impossible (forced here with --loopback): two `ray start`
nodes on this machine's own network stack, told apart by labels, saying so; and a housekeeping CPU:
Ray's processes and the worker actors run there, the slots on the rest, and the run records it."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hostprofiles.cpulist import format_cpulist
from orchestrator import fleet, fleet_state, procs
from orchestrator.store import Store

pytestmark = [pytest.mark.fleet, pytest.mark.slow,
              pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a housekeeping CPU needs 2 CPUs or more")]
PROFILES = ["ryzen9-7950x", "epyc-9654-2s-nps1"]
ENV = {k: v for k, v in os.environ.items()
       if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
CPUS = sorted(os.sched_getaffinity(0))
HK, REST = CPUS[-1], CPUS[:-1]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("fleet-state")
    old = os.environ.get("NUMASWEEP_STATE_DIR")
    os.environ["NUMASWEEP_STATE_DIR"] = ENV["NUMASWEEP_STATE_DIR"] = str(state_dir)
    name = f"l{os.getpid()}"
    lines: list[str] = []
    try:
        yield fleet.up(PROFILES, name=name, use_netns=False, housekeeping=str(HK), say=lines.append), lines
    finally:
        state = fleet_state.load(name)
        fleet.down(name, say=lambda _l: None)
        fleet.down(name, say=lambda _l: None)  # twice: nothing to do, no error
        if old is None:
            os.environ.pop("NUMASWEEP_STATE_DIR", None)
        else:
            os.environ["NUMASWEEP_STATE_DIR"] = old
        if state is not None:
            assert not Path(state.workdir).exists() and not procs.marked_pids(fleet.FLEET_ENV, state.workdir)


def affinity(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def test_loopback_fallback_says_so_and_labels_hosts(loop):
    state, lines = loop
    assert state.mode == "loopback" and state.reason == "--loopback given"
    assert any("loopback, no network namespaces (--loopback given)" in ln for ln in lines), lines
    nodes = fleet.alive_nodes(state)
    assert sorted(n["labels"][fleet.HOST_LABEL] for n in nodes) == sorted(PROFILES)
    # Ray's own processes were started on the housekeeping CPU
    pids = procs.marked_pids(fleet.FLEET_ENV, state.workdir)
    assert pids and {affinity(p) for p in pids} - {None} == {str(HK)}


def test_slots_run_off_the_housekeeping_cpu_and_the_run_records_it(loop, tmp_path):
    state, _ = loop
    (tmp_path / "spec.toml").write_text('[sweep]\nc = 1024\nub = 256\ntg = 32\n[backend]\nkind = "replay"\n'
                                        'delay_s = 0.2\n')
    seen: dict[int, str] = {}
    done = threading.Event()

    def watch_actors():  # the worker actors, while they work
        while not done.is_set():
            for pid in procs.marked_pids(fleet.FLEET_ENV, state.workdir):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"_SlotActor" in cmd:
                    seen[pid] = affinity(pid) or seen.get(pid, "")
            time.sleep(0.2)
    t = threading.Thread(target=watch_actors, daemon=True)
    t.start()
    try:
        res = subprocess.run([sys.executable, "-m", "orchestrator", "run", "spec.toml", "--address",
                              state.run_address, "--no-report"], cwd=tmp_path, env=ENV, capture_output=True,
                             text=True, timeout=240)
    finally:
        done.set()
        t.join()
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert state.run_address == state.gcs_address  # on loopback the driver joins as a local node
    with Store.open(tmp_path / "numasweep-results" / "numasweep.db") as store:
        (run,) = store.runs()
        pts = store.points(run["id"])
    rest = format_cpulist(REST)
    assert len(pts) == 12 and {p["verified_cpus"] for p in pts} == {rest}
    assert seen and set(seen.values()) == {str(HK)}, seen
    iso = run["settings"]["isolation"]
    assert set(iso) == set(PROFILES)
    for rec in iso.values():
        assert rec["housekeeping_cpus"] == str(HK) and rec["ray_cpus"] == str(HK) and rec["slot_cpus"] == rest
        assert set(rec["worker_actor"].values()) == {f"cpus {HK}"}
