"""A real simulated fleet: three Ray nodes (`ray start`), each in its own network namespace on a
private bridge, each reporting a different saved profile, with Ray token authentication.
Driven from this machine's own namespace, outside the fleet, like a user would: `numasweep run
--address ray://...`, `submit`, a client or node without the token, a host whose model bytes
differ, a host lost mid-run and resumed. One fleet for the module, always taken down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import fleet, fleet_state, netns, procs
from orchestrator.store import Store

REASON = netns.unavailable()
pytestmark = [pytest.mark.fleet, pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"network namespaces impossible here: {REASON}")]
PROFILES = ["xeon-6980p-2s-snc3", "ryzen9-7950x", "threadripper-pro-5975wx"]
# No embedded-Ray setting leaks into the fleet's clients (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 forbids joining).
ENV = {k: v for k, v in os.environ.items()
       if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("fleet-state")
    old = os.environ.get("NUMASWEEP_STATE_DIR")
    os.environ["NUMASWEEP_STATE_DIR"] = str(state_dir)
    ENV["NUMASWEEP_STATE_DIR"] = str(state_dir)
    name = f"t{os.getpid()}"
    try:
        yield fleet.up(PROFILES, name=name, use_netns=True, housekeeping="none", say=lambda _l: None)
    finally:
        state = fleet_state.load(name)
        fleet.down(name, say=lambda _l: None)
        if old is None:
            os.environ.pop("NUMASWEEP_STATE_DIR", None)
        else:
            os.environ["NUMASWEEP_STATE_DIR"] = old
        if state is not None:  # down left nothing behind
            assert not {h.namespace for h in state.hosts} & netns.namespaces()
            assert not Path(state.workdir).exists()
            assert not procs.marked_pids(fleet.FLEET_ENV, state.workdir)


def numasweep(*args, cwd, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


REPLAY = '[sweep]\nc = 512\nub = 256\ntg = 32\n[backend]\nkind = "replay"\ndelay_s = 0.02\n' \
         '[placement]\npolicy = "whole-host"\n'


def test_fleet_hosts_have_their_own_network_stacks(fleet3, tmp_path):
    assert fleet3.mode == "netns"
    assert {h.namespace for h in fleet3.hosts} <= netns.namespaces()
    addrs = [h.address for h in fleet3.hosts]
    assert len(set(addrs)) == 3 and fleet3.gateway not in addrs
    nodes = fleet.alive_nodes(fleet3)
    assert sorted(n["ip"] for n in nodes) == sorted(addrs)
    assert {n["labels"][fleet.HOST_LABEL] for n in nodes} == set(PROFILES)
    # every node's processes live in that node's namespace
    for h in fleet3.hosts:
        assert h.pid in netns.namespace_pids(h.namespace)
    # the CLI prints the same addresses and the token
    st = numasweep("fleet", "status", "--name", fleet3.name, "--address", cwd=tmp_path, timeout=60)
    assert st.returncode == 0 and st.stdout.strip().splitlines()[-1] == fleet3.run_address, st.stdout + st.stderr
    assert "the head counts 3 of 3 host(s) alive" in st.stdout
    tok = numasweep("fleet", "token", "--name", fleet3.name, cwd=tmp_path, timeout=60)
    assert tok.stdout.strip() == Path(fleet3.token_path).read_text().strip()
    assert oct(Path(fleet3.token_path).stat().st_mode & 0o777) == "0o600"


def test_run_from_outside_the_fleet_with_the_printed_address(fleet3, tmp_path):
    write_spec(tmp_path / "spec.toml", REPLAY)
    res = numasweep("run", "spec.toml", "--address", fleet3.run_address, "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "using the token of fleet" in res.stderr
    with Store.open(tmp_path / "numasweep-results" / "numasweep.db") as store:
        (run,) = store.runs()
        pts = store.points(run["id"])
        hosts = {h["name"]: h for h in store.hosts()}
    assert run["status"] == "ok" and len(pts) == 6
    assert {p["host_name"] for p in pts} == set(PROFILES)
    assert len({hosts[n]["fingerprint"] for n in PROFILES}) == 3
    assert all(p["simulated"] for p in pts) and all(hosts[n]["simulated"] for n in PROFILES)
    iso = run["settings"]["isolation"]
    assert set(iso) == set(PROFILES) and all(v["ray_resource_isolation"] is False for v in iso.values())


def test_gcs_address_from_outside_fails_fast_saying_how(fleet3, tmp_path):
    write_spec(tmp_path / "spec.toml", REPLAY)
    t0 = time.monotonic()
    res = numasweep("run", "spec.toml", "--address", fleet3.gcs_address, "--no-report", cwd=tmp_path, timeout=60)
    assert time.monotonic() - t0 < 30
    assert res.returncode == 2, res.stderr
    assert "not a node of that Ray cluster" in res.stderr and "ray://" in res.stderr and "submit" in res.stderr


def test_submit_runs_on_the_head(fleet3, tmp_path):
    write_spec(tmp_path / "spec.toml", REPLAY)
    res = numasweep("submit", "spec.toml", "--address", fleet3.dashboard_url, "--store", str(tmp_path / "jobs.db"),
                    "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    job = res.stdout.strip().splitlines()[-1]
    follow = numasweep("logs", job, "--follow", "--address", fleet3.dashboard_url, cwd=tmp_path)
    assert "run 1: ok (6 of 6 points" in follow.stdout, follow.stdout[-3000:] + follow.stderr[-2000:]
    with Store.open(tmp_path / "jobs.db") as store:
        assert {p["host_name"] for p in store.points()} == set(PROFILES)


def test_client_and_node_without_the_token_are_refused(fleet3, tmp_path):
    write_spec(tmp_path / "spec.toml", REPLAY)
    stranger = {**ENV, "NUMASWEEP_STATE_DIR": str(tmp_path / "no-fleets"), "HOME": str(tmp_path)}
    # Ray Client, no token / a wrong one
    res = numasweep("run", "spec.toml", "--address", fleet3.run_address, cwd=tmp_path, env=stranger, timeout=60)
    assert res.returncode == 2 and "refused: no token given" in res.stderr, res.stderr
    res = numasweep("run", "spec.toml", "--address", fleet3.run_address, cwd=tmp_path,
                    env={**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, timeout=60)
    assert res.returncode == 2 and "refused: the token given is wrong" in res.stderr, res.stderr
    # Jobs API
    res = numasweep("status", "--address", fleet3.dashboard_url, cwd=tmp_path, env=stranger, timeout=60)
    assert res.returncode == 2 and "token" in res.stderr.lower(), res.stderr
    assert not (tmp_path / "numasweep-results").exists() or not list((tmp_path / "numasweep-results").glob("*.db"))
    # A node: `ray start --address HEAD` from a worker's namespace, without the token, is refused.
    worker = fleet3.hosts[1]
    temp = tmp_path / "intruder"
    argv = netns.exec_argv(worker.namespace, [fleet.RAY, "start", f"--address={fleet3.gcs_address}",
                                              f"--node-ip-address={worker.address}", "--num-cpus=1",
                                              f"--temp-dir={temp}", "--disable-usage-stats"])
    env = {**stranger, "RAY_AUTH_MODE": "disabled", "NUMASWEEP_INTRUDER": str(temp)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in procs.marked_pids("NUMASWEEP_INTRUDER", str(temp)):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0 and "AuthenticationError" in out, out[-2000:]
    assert len(fleet.alive_nodes(fleet3)) == 3


def test_host_with_other_model_bytes_is_excluded(fleet3, tmp_path, model_factory):
    # The third host already "has" micro-seed0 in its own model directory, but other bytes.
    odd = Path(fleet3.hosts[2].home) / "models" / "micro-seed0.gguf"
    odd.parent.mkdir(parents=True, exist_ok=True)
    odd.write_bytes(Path(model_factory("micro", seed=7)).read_bytes())
    try:
        write_spec(tmp_path / "spec.toml", '[model]\nshape = "micro"\n[sweep]\nc = 256\nub = 128\ntg = 8\n'
                                           '[placement]\npolicy = "whole-host"\n')
        res = numasweep("run", "spec.toml", "--address", fleet3.run_address, "--no-report", cwd=tmp_path)
    finally:
        odd.unlink()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if "excluded" in ln]  # progress and notes go to stderr
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith(f"host {PROFILES[2]} excluded: model micro-seed0 at {odd}: sha256 ")
    with Store.open(tmp_path / "numasweep-results" / "numasweep.db") as store:
        (run,) = store.runs()
        pts = store.points(run["id"])
    ident = run["settings"]["model_identity"]
    ref = ident["reference"]["micro-seed0"]["sha256"]
    odd_hash = ident["hosts"][PROFILES[2]]["micro-seed0"]["sha256"]
    assert ref in line and odd_hash in line and ref != odd_hash
    assert {h: m["micro-seed0"]["sha256"] for h, m in ident["hosts"].items()} == {
        PROFILES[0]: ref, PROFILES[1]: ref, PROFILES[2]: odd_hash}
    assert list(ident["excluded"]) == [PROFILES[2]]
    assert run["status"] == "ok" and {p["host_name"] for p in pts} == set(PROFILES[:2]) and len(pts) == 4


def test_lost_host_makes_run_partial_and_resume_measures_only_what_is_missing(fleet3, tmp_path):
    victim = fleet3.hosts[2]
    write_spec(tmp_path / "spec.toml", '[sweep]\nc = 2048\nub = 256\ntg = 32\n[backend]\nkind = "replay"\n'
                                       'delay_s = 0.3\n[placement]\npolicy = "whole-host"\n')
    db = tmp_path / "numasweep-results" / "numasweep.db"
    stopped = []

    def stop_when_started():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with Store.open(db, create=False) as store:
                    if any(p["host_name"] == victim.name for p in store.points()):
                        fleet.stop_host(fleet3.name, victim.name, say=lambda _l: None)
                        stopped.append(time.monotonic())
                        return
            except Exception:  # noqa: BLE001 - the store does not exist yet
                pass
            time.sleep(0.2)
    t = threading.Thread(target=stop_when_started, daemon=True)
    t.start()
    res = numasweep("run", "spec.toml", "--address", fleet3.run_address, "--no-report", cwd=tmp_path, timeout=300)
    t.join()
    assert stopped, res.stdout[-2000:]
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    with Store.open(db) as store:
        (run,) = store.runs()
        first = store.points(run["id"])
    by_host = {h: [p for p in first if p["host_name"] == h] for h in PROFILES}
    assert run["status"] == "partial" and victim.name in run["note"] and "lost" in run["note"]
    assert len(by_host[PROFILES[0]]) == len(by_host[PROFILES[1]]) == 8
    lost = 8 - len(by_host[victim.name])
    assert 1 <= lost < 8

    fleet.start_host(fleet3.name, victim.name, say=lambda _l: None)
    res = numasweep("resume", str(run["id"]), "--address", fleet3.run_address, "--no-report", cwd=tmp_path,
                    timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"{lost} point(s) to measure" in res.stderr, res.stderr[:2000]
    with Store.open(db) as store:
        pts = store.points(run["id"])
        assert store.run(run["id"])["status"] == "ok"
    keys = [(p["host_name"], p["slot"], p["settings_key"], p["rep"], p["n_kv"]) for p in pts]
    assert len(keys) == len(set(keys)) == 24  # nothing lost, nothing twice
    before = {p["id"]: p for p in first}
    assert all(before[i]["created_at"] == p["created_at"] for p in pts for i in [p["id"]] if i in before)
    assert sum(p["host_name"] == victim.name for p in pts) == 8
    assert json.dumps(sorted(k for k in keys if k[0] != victim.name)) == json.dumps(
        sorted((p["host_name"], p["slot"], p["settings_key"], p["rep"], p["n_kv"]) for p in first
               if p["host_name"] != victim.name))
