"""`numasweep submit / status / logs` against a real `ray start --head` on loopback, started
by this test with its own temp dir and explicit ports, and stopped by its process group."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

from orchestrator.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def head():
    tmp = tempfile.mkdtemp(prefix="nsw-j-")
    gcs, dash, agent, agent_grpc, client, metrics, renv, nm, om = free_ports(9)
    argv = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--ray-client-server-port={client}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv}", f"--node-manager-port={nm}",
            f"--object-manager-port={om}", f"--temp-dir={tmp}", "--num-cpus=2", "--include-dashboard=true",
            "--object-store-memory=100000000", "--disable-usage-stats"]
    proc = subprocess.Popen(argv, env=ENV, stdout=open(os.path.join(tmp, "head.log"), "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urlopen(f"{url}/api/version", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("ray start --head did not come up: " + open(os.path.join(tmp, "head.log")).read()[-2000:])
            time.sleep(0.5)
    yield url, f"127.0.0.1:{gcs}"
    # Only what we started: our `ray start` and its process group (raylet, GCS, dashboard, workers).
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def numasweep(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_status_logs(head, tmp_path):
    head, _ = head
    (tmp_path / "spec.toml").write_text('label = "job"\n[sweep]\nc = 512\nub = 256\ntg = 32\n'
                                        '[backend]\nkind = "replay"\ndelay_s = 0.05\n')
    res = numasweep("submit", "spec.toml", "--address", head, "--store", "jobs.db", "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().splitlines()[-1]
    follow = numasweep("logs", job, "--follow", "--address", head, cwd=tmp_path, timeout=180)
    assert follow.returncode == 0, follow.stderr
    assert "run 1: ok" in follow.stdout, follow.stdout[-2000:]
    deadline = time.monotonic() + 60
    while True:
        st = numasweep("status", job, "--address", head, cwd=tmp_path)
        if "SUCCEEDED" in st.stdout or "FAILED" in st.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert st.stdout.strip() == f"{job}: SUCCEEDED", st.stdout + st.stderr
    listing = numasweep("status", "--address", head, cwd=tmp_path)
    assert job in listing.stdout and "SUCCEEDED" in listing.stdout
    logs = numasweep("logs", job, "--address", head, cwd=tmp_path)
    assert "[2/2]" in logs.stdout and "|    PP |     TG |   N_KV |" in logs.stdout
    with Store.open(tmp_path / "jobs.db") as store:
        (run,) = store.runs()
        assert run["status"] == "ok" and run["label"] == "job" and store.count_points(run["id"]) == 2


def test_run_joins_existing_cluster_with_address(head, tmp_path):
    _, gcs = head
    (tmp_path / "spec.toml").write_text('[sweep]\nc = 512\nub = 256\ntg = 32\n[backend]\nkind = "replay"\n')
    res = numasweep("run", "spec.toml", "--address", gcs, "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "run 1: ok (2 of 2 points" in res.stdout
    with Store.open(tmp_path / "numasweep-results" / "numasweep.db") as store:
        assert store.count_points() == 2


def test_no_job_server_is_a_user_error(tmp_path):
    (port,) = free_ports(1)
    res = numasweep("status", "--address", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert res.returncode == 2 and "no Ray job server" in res.stderr, res.stderr
