"""Real embedded Ray: pinned worker actors stream rows into the store; kill -9 of the engine
process or of the worker actor re-runs only what is missing (exact stored-point counts)."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time

# No RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER here: start_local() keeps the embedded Ray on loopback by itself.
for _k, _v in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_k, _v)

import psutil  # noqa: E402
import pytest  # noqa: E402

from orchestrator import ray_backend  # noqa: E402
from orchestrator.coordinator import run_sweep  # noqa: E402
from orchestrator.spec import SweepSpec  # noqa: E402
from orchestrator.store import Store  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    tmp = tempfile.mkdtemp(prefix="nsw-t-")
    local = ray_backend.start_local(temp_dir=tmp)
    yield
    ray_backend.shutdown(local)
    shutil.rmtree(tmp, ignore_errors=True)


def spec(tmp_path, delay=0.0, c=1024, **sweep):
    return SweepSpec.from_dict({"store": str(tmp_path / "s.db"),
                                "backend": {"kind": "replay", "delay_s": delay},
                                "sweep": {"c": c, "ub": 256, "k_repack": ["on", "off"], **sweep}})


def replay_children(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "orchestrator.backends.replay" in cmd and marker in cmd:
            out.append(p)
    return out


def test_local_ray_run_streams_pinned_rows(ray_local, tmp_path):
    s = spec(tmp_path, delay=0.01, repetitions=2)
    lines = []
    with Store.open(s.store) as store:
        ex = ray_backend.RayExecutor()
        try:
            res = run_sweep(s, ex, store, progress=lines.append)
        finally:
            ex.close()
        pts = store.points(res.run_id)
        assert res.status == "ok" and res.stored == res.expected == 16 == len(pts)
        assert store.run(res.run_id)["status"] == "ok"
    cpus = sorted(os.sched_getaffinity(0))
    assert {p["verified_cpus"] for p in pts} == {ray_backend_cpulist(cpus)}
    assert {p["verified_mems"] for p in pts} <= {"bind:0", None}
    assert {p["settings"]["k_repack"] for p in pts} == {"on", "off"}
    assert all(p["placement"]["policy"] == "per-node" and not p["simulated"] for p in pts)
    assert any(line.startswith("[16/16]") for line in lines)  # live progress: points done / total


def ray_backend_cpulist(cpus):
    from hostprofiles.cpulist import format_cpulist
    return format_cpulist(cpus)


@pytest.mark.parametrize("victim", ["engine", "actor"])
def test_kill_9_reruns_unfinished_points_only(ray_local, tmp_path, victim):
    delay = "0.137" if victim == "engine" else "0.139"  # a marker to find our child by
    s = spec(tmp_path, delay=float(delay), c=2048)  # 2 jobs x 8 rows
    killed = []
    with Store.open(s.store) as store:
        def killer():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if store.count_points() >= 3:
                    kids = replay_children(delay)
                    if kids:
                        target = kids[0] if victim == "engine" else kids[0].parent()
                        killed.append((target.pid, store.count_points()))
                        os.kill(target.pid, signal.SIGKILL)
                        return
                time.sleep(0.02)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        ex = ray_backend.RayExecutor()
        lines = []
        try:
            res = run_sweep(s, ex, store, progress=lines.append)
        finally:
            ex.close()
        t.join()
        assert killed, "nothing was killed"
        pts = store.points(res.run_id)
        keys = {(p["settings_key"], p["rep"], p["n_kv"]) for p in pts}
        # Exactly every point once: the rows stored before the kill were not stored again.
        assert res.status == "ok" and len(pts) == len(keys) == 16 == store.count_points(res.run_id)
        assert any("retry" in line for line in lines), lines


def test_embedded_ray_listens_on_loopback_only(ray_local):
    me = psutil.Process()
    ours = {p.pid for p in me.children(recursive=True)} | {me.pid}
    listening = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in listening), listening
