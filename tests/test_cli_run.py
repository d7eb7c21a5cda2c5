"""`numasweep run / resume` end to end as subprocesses: bad specs exit 2 naming the key;
a coordinator killed -9 leaves a readable store with every finished point; resume finishes it."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store import Store

ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")


def numasweep(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("text, needles", [
    ("[sweep]\nthreadz = 2\n", ["unknown key 'sweep.threadz'", "allowed:", "threads_batch"]),
    ("[sweep]\nub = 'big'\n", ["sweep.ub: must be an integer", "'big'"]),
    ("[sweep]\nk_repack = 'sometimes'\n", ["sweep.k_repack", "allowed: auto, on, off"]),
    ("[sweep]\nthreads = 4096\n[backend]\nkind = 'replay'\n", ["sweep.threads = 4096 is impossible", "allowed: 1.."]),
])
def test_bad_spec_exits_2_naming_key(tmp_path, text, needles):
    (tmp_path / "bad.toml").write_text(text)
    res = numasweep("run", "bad.toml", "--no-ray", "--no-report", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("numasweep run: error:") and "Traceback" not in res.stderr
    for needle in needles:
        assert needle in line, line
    db = tmp_path / "numasweep-results" / "numasweep.db"
    if db.exists():  # nothing measured, no run recorded
        with Store.open(db) as store:
            assert store.runs() == []


def test_resume_of_unknown_run_is_a_user_error(tmp_path):
    Store.open(tmp_path / "s.db").close()
    res = numasweep("resume", "7", "--store", "s.db", "--no-ray", cwd=tmp_path)
    assert res.returncode == 2 and "no run 7" in res.stderr


def replay_children(cwd: Path) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "orchestrator.backends.replay" in (p.info["cmdline"] or []) and Path(p.cwd()) == cwd:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_killed_coordinator_keeps_points_and_resume_finishes(tmp_path):
    (tmp_path / "spec.toml").write_text("""
[sweep]
c = 4096
ub = 256
tg = 32
k_repack = ["on", "off"]
[backend]
kind = "replay"
delay_s = 0.05
""")  # 2 jobs x 16 rows
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "spec.toml", "--no-ray", "--no-report"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "numasweep-results" / "numasweep.db"
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline and n < 5:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    n = con.execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                pass  # schema not created yet
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert not replay_children(tmp_path), "the engine child outlived its killed worker"
    with Store.open(db) as store:
        (run,) = store.runs()
        kept = store.count_points(run["id"])
        assert run["status"] == "running" and 5 <= kept < 32
    res = numasweep("resume", str(run["id"]), "--no-ray", "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{32 - kept} of {32 - kept} points" in res.stdout
    with Store.open(db) as store:
        pts = store.points(run["id"])
        assert store.run(run["id"])["status"] == "ok"
    assert len(pts) == 32 == len({(p["settings_key"], p["rep"], p["n_kv"]) for p in pts})
    assert "|    PP |     TG |   N_KV |" in res.stdout
