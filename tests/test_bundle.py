"""Result bundles: bundle -> import into an empty store is the same run; twice is a no-op; bad ones refused."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from orchestrator.bundle import BundleError, is_bundle, read_bundle, write_bundle
from orchestrator.importers.ingest import import_files
from orchestrator.store import Point, Store

ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
POINT_KEYS_SKIPPED = ("id", "run_id", "host_id", "build_id", "label")  # store-local numbering (label compared on the run)


def _source_store(path, tmp_path) -> int:
    import hostprofiles

    (path.parent / "models").mkdir(parents=True, exist_ok=True)
    (path.parent / "models" / "micro-seed3.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    prof = hostprofiles.load_profile("epyc-9654-2s-nps4")
    with Store.open(path) as s:
        h0 = s.upsert_host(fingerprint=f"{prof.fingerprint}:box", profile=prof.to_json(), name="box")
        run = s.create_run(settings={"models": ["micro-seed3"], "spec_dir": str(tmp_path)},
                           spec={"label": "volunteer", "model": {"shape": "micro", "seed": 3}, "sweep": {"c": 1024}},
                           label="volunteer run", version="0.1.0", git_commit="abc123" * 6)
        for slot, cpus in (("node0", "0-23"), ("node1", "24-47")):
            for rep in range(2):
                for n_kv in (0, 512):
                    s.add_point(run, Point(
                        n_kv=n_kv, pp=512, tg=128, t_pp=1.25 + rep / 100, speed_pp=512 / (1.25 + rep / 100),
                        t_tg=4.0, speed_tg=32.0, rep=rep, host_id=h0, slot=slot,
                        placement={"policy": "per-node", "cpus": cpus}, rss_hwm_mib=900.5, repack_scratch_mib=0.25,
                        verified_cpus=cpus, verified_mems=slot[-1], noise=0.012 * (rep + 1),
                        settings={"threads": 24, "type_k": "q8_0", "k_repack": "on", "flash_attn": True}))
        s.finish_run(run, "partial", "missing 2 point(s): node1 job 3")
        return run


def _snapshot(store: Store, run_id: int):
    run = store.run(run_id)
    pts = [{k: v for k, v in p.items() if k not in POINT_KEYS_SKIPPED} for p in store.points(run_id)]
    hosts = [{k: h[k] for k in ("fingerprint", "name", "profile", "simulated")} for h in store.hosts()]
    facts = {k: run[k] for k in ("label", "status", "settings", "spec", "version", "git_commit", "started_at",
                                 "finished_at", "note")}
    return facts, pts, hosts


def test_round_trip_into_an_empty_store(tmp_path):
    src = tmp_path / "volunteer" / "numasweep.db"
    run = _source_store(src, tmp_path)
    out = tmp_path / "run.numasweep.json.gz"
    with Store.open(src, create=False) as s:
        write_bundle(s, run, out)
        before = _snapshot(s, run)
    assert is_bundle(out) and out.read_bytes()[:2] == b"\x1f\x8b"
    doc = json.loads(gzip.decompress(out.read_bytes()))
    assert doc["format"] == "numasweep-bundle" and doc["version"] == 1 and len(doc["points"]) == 8
    (model,) = doc["models"]
    assert model["shape"] == "micro" and model["size"] == 1028 and len(model["sha256"]) == 64
    dev = tmp_path / "dev.db"
    with Store.open(dev) as s:
        (res,) = import_files(s, [out])
        assert not res.duplicate and res.n_points == 8
        after = _snapshot(s, res.run_id)
        imported = s.run(res.run_id)
    assert after == before                          # same points, times, settings, placement, host facts
    assert imported["source"] == "bundle"
    marked = imported["meta"]["bundle"]
    assert marked["file"] == str(out.resolve()) and marked["created_by"]["run_id"] == run
    assert marked["source"] == "numasweep" and marked["models"] == doc["models"]
    with Store.open(dev) as s:
        (again,) = import_files(s, [out])
        assert again.duplicate and again.run_id == res.run_id and s.count_points() == 8 and len(s.runs()) == 1
        # the same run bundled again, into a plain JSON file: the same content, still a no-op
        with Store.open(src, create=False) as s_src:
            write_bundle(s_src, run, tmp_path / "again.json", hash_models=True)
        (third,) = import_files(s, [tmp_path / "again.json"])
        assert third.duplicate and len(s.runs()) == 1


def test_refusals(tmp_path):
    src = tmp_path / "src.db"
    run = _source_store(src, tmp_path)
    with Store.open(src, create=False) as s:
        good = write_bundle(s, run, tmp_path / "b.json")
        with pytest.raises(BundleError, match="exists"):
            write_bundle(s, run, tmp_path / "b.json")
        running = s.create_run(settings={})
        with pytest.raises(BundleError, match="still running"):
            write_bundle(s, running, tmp_path / "r.json")
    doc = json.loads(good.read_text())
    for name, change, needle in (
            ("v9.json", lambda d: d.update(version=9), "bundle version 9 is unknown"),
            ("neg.json", lambda d: d["points"][3].update(speed_pp=-1.0), "points[3]: point field speed_pp"),
            ("host.json", lambda d: d["points"][0].update(host="h7"), "points[0].host 'h7'"),
    ):
        bad = json.loads(json.dumps(doc))
        change(bad)
        (tmp_path / name).write_text(json.dumps(bad))
        with pytest.raises(BundleError, match=re.escape(needle)):
            read_bundle(tmp_path / name)
    dev = tmp_path / "dev.db"
    with Store.open(dev) as s:
        with pytest.raises(BundleError, match="neg.json"):
            import_files(s, [good, tmp_path / "neg.json"])   # one refused file: nothing written at all
        assert s.runs() == [] and s.count_points() == 0
    (tmp_path / "trunc.json.gz").write_bytes(gzip.compress(good.read_bytes())[:200])
    with pytest.raises(BundleError, match="trunc.json.gz"):
        read_bundle(tmp_path / "trunc.json.gz")


def test_volunteer_recipe_end_to_end(tmp_path):
    """The README recipe: run, bundle, attach; the developer imports and gates on it."""
    vol, dev = tmp_path / "volunteer", tmp_path / "developer"
    vol.mkdir()
    dev.mkdir()
    (vol / "spec.toml").write_text("[sweep]\nc = 1024\nub = 256\ntg = 32\nrepetitions = 2\n"
                                   "[backend]\nkind = \"replay\"\n")

    def ns(*args, cwd):
        res = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=ENV, capture_output=True,
                             text=True, timeout=300)
        return res
    assert ns("run", "spec.toml", "--no-ray", "--no-report", cwd=vol).returncode == 0
    made = ns("bundle", "1", cwd=vol)
    assert made.returncode == 0, made.stderr
    path = vol / "numasweep-run-1.numasweep.json.gz"
    assert path.is_file() and f"bundle: {path.name}" in made.stdout
    imp = ns("import", str(path), cwd=dev)
    assert imp.returncode == 0 and "run 1 (bundle), 8 points" in imp.stdout, imp.stderr
    assert "already imported as run 1" in ns("import", str(path), cwd=dev).stdout
    gate = ns("check", "--baseline", str(path), "--run", "1", cwd=dev)   # a bundle against its own import
    assert gate.returncode == 0 and "PASS" in gate.stdout, gate.stdout + gate.stderr
    with Store.open(vol / "numasweep-results" / "numasweep.db", create=False) as a, \
            Store.open(dev / "numasweep-results" / "numasweep.db", create=False) as b:
        assert _snapshot(a, 1) == _snapshot(b, 1)
