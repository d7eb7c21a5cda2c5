"""`numasweep run` end to end with the real engine: a generated micro model, embedded Ray,
one pinned worker per node, K-cache repack on vs off, rows in the store, tables, report."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator.spec import shapes
from orchestrator.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")


def test_spec_shapes_are_engine_shapes():
    from engine.synth import ALL_SHAPES

    assert set(shapes()) == set(ALL_SHAPES)


def test_run_builtin_engine_on_local_ray(tmp_path):
    (tmp_path / "spec.toml").write_text("""
label = "micro repack"
[model]
shape = "micro"
[sweep]
c = 512
ub = 256
tg = 8
type_k = "q8_0"
flash_attn = true
k_repack = ["on", "off"]
""")
    res = subprocess.run([sys.executable, "-m", "orchestrator", "run", "spec.toml"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "[4/4]" in res.stderr and "[4/4]" not in out  # live progress on stderr, tables on stdout
    assert "|    PP |     TG |   N_KV |" in out and "k_repack=on" in out
    assert (tmp_path / "numasweep-results" / "models" / "micro-seed0.gguf").is_file()
    with Store.open(tmp_path / "numasweep-results" / "numasweep.db") as store:
        (run,) = store.runs()
        pts = store.points(run["id"])
    assert run["status"] == "ok" and run["git_commit"] and len(pts) == 4
    assert {p["settings"]["k_repack"] for p in pts} == {"on", "off"}
    assert len({p["settings_key"] for p in pts}) == 2  # one identity per job, not per measured row
    assert {p["n_kv"] for p in pts} == {0, 256} and all(p["pp"] == 256 and p["tg"] == 8 for p in pts)
    assert all(p["speed_pp"] > 0 and p["speed_tg"] > 0 and p["rss_hwm_mib"] for p in pts)
    assert all(p["weight_bytes"] > 0 for p in pts)  # for the report's bandwidth table
    assert {p["build"] for p in pts} == {"builtin"} and all(p["build_identity"]["git_commit"] for p in pts)
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    from hostprofiles.cpulist import format_cpulist, parse_cpulist
    assert {p["verified_cpus"] for p in pts} == {format_cpulist(parse_cpulist(cpus))}
    path = out.split("report:")[1].split()[0]  # the report lane's write_report, when run ends
    assert os.path.isfile(path) and path.endswith(".html")
    assert path == str(tmp_path / "numasweep-results" / "numasweep-reports" / "run-1" / "report.html")
