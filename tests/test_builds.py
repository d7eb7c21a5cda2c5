"""Builds as an axis, honest external builds, the engine's echo and the store migration (issue 12).

The external build here is a real process that speaks llama-sweep-bench's flags and output:
numasweep's own ``python -m engine bench`` run through an argv template.
"""
from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.coordinator import run_sweep
from orchestrator.local_backend import LocalExecutor, LocalSlot
from orchestrator.report import write_report
from orchestrator.spec import SweepSpec
from orchestrator.store import Store

ROOT = Path(__file__).resolve().parents[1]
ENGINE_ARGV = [sys.executable, "-m", "engine", "bench", "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "-n", "{tg}",
               "-t", "{threads}", "-tb", "{threads_batch}", "-ctk", "{type_k}", "{fa}", "--output-format", "jsonl"]


class RecordingExecutor(LocalExecutor):
    """The real local executor; keeps every row its workers streamed (the engines' echo)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, dict]] = []

    def open_slot(self, host, slot):
        inner = super().open_slot(host, slot)
        outer = self

        class Recording(LocalSlot):
            def run(self, job):
                for ev in inner.run(job):
                    outer.rows.append((job.build.name, ev["row"]))
                    yield ev
        return Recording(inner.worker)


def test_mla_x_fmoe_on_deepseek2_tiny_stores_what_the_engine_echoed(tmp_path):
    spec = SweepSpec.from_dict({"store": str(tmp_path / "s.db"), "model": {"shape": "deepseek2-tiny"},
                                "sweep": {"c": 64, "ub": 32, "tg": 4, "type_k": "q8_0", "mla": [0, 3],
                                          "fmoe": [False, True], "threads": 1}})
    ex = RecordingExecutor()
    res = run_sweep(spec, ex, spec.store, models_dir=tmp_path / "models")
    assert res.status == "ok" and res.stored == 8
    with Store.open(spec.store) as store:
        pts = store.points(res.run_id)
    assert len({p["settings_key"] for p in pts}) == 4
    assert {(p["settings"]["mla"], p["settings"]["fmoe"]) for p in pts} == {(0, False), (0, True), (3, False),
                                                                             (3, True)}
    stored = {(p["settings"]["mla"], p["settings"]["fmoe"]): p["settings"] for p in pts}
    for _, row in ex.rows:  # every stored value is the one the engine echoed for that row
        s = stored[(row["mla"], row["fmoe"])]
        for name in ("c", "ub", "b", "threads", "threads_batch", "type_k", "type_v", "flash_attn", "k_repack",
                     "rtr", "amb", "no_mmap", "seed"):
            assert s[name] == row[name], name


def test_external_without_k_repack_placeholder_exits_2_before_ray_and_store(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    argv = json.dumps(ENGINE_ARGV)
    (tmp_path / "spec.toml").write_text(f"""
[model]
path = "m.gguf"
[sweep]
k_repack = ["on", "off"]
[backend]
kind = "external"
argv = {argv}
""")
    before = set(glob.glob("/tmp/nsw-ray-*"))
    p = subprocess.run([sys.executable, "-m", "orchestrator", "run", "spec.toml", "--store", "s.db"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "build 'external'" in p.stderr and "'k_repack'" in p.stderr and "{k_repack}" in p.stderr
    assert not (tmp_path / "s.db").exists()
    assert set(glob.glob("/tmp/nsw-ray-*")) == before  # no embedded Ray was started


def test_two_builds_interleaved_and_compared_in_the_report(tmp_path, micro_model):
    spec = SweepSpec.from_dict({
        "store": str(tmp_path / "s.db"), "model": {"path": str(micro_model)},
        "sweep": {"c": 64, "ub": 32, "tg": 4, "type_k": "q8_0", "threads": 1, "repetitions": 2},
        "backend": {"builds": [{"name": "ext", "kind": "external", "argv": ENGINE_ARGV},
                               {"name": "ours", "kind": "builtin"}]}})
    res = run_sweep(spec, LocalExecutor(), spec.store)
    assert res.status == "ok" and res.stored == 8
    with Store.open(spec.store) as store:
        pts = store.points(res.run_id)
        order = [(r[0], r[1]) for r in sqlite3.connect(spec.store).execute(
            "SELECT build, rep FROM points WHERE n_kv = 0 ORDER BY id")]
        html = write_report(store, [res.run_id], tmp_path / "rep")
        builds = store.builds()
    # list order on even repetitions, reversed on odd ones
    assert order == [("ext", 0), ("ours", 0), ("ours", 1), ("ext", 1)]
    ext = [p for p in pts if p["build"] == "ext"]
    ours = [p for p in pts if p["build"] == "ours"]
    # ext was told c, ub, tg, threads, threads_batch, type_k, fa: the rest is unknown, never a default
    assert ext[0]["settings"]["type_v"] is None and ext[0]["settings"]["k_repack"] is None
    assert ext[0]["settings"]["type_k"] == "q8_0" and ext[0]["settings"]["flash_attn"] is True
    assert ours[0]["settings"]["type_v"] == "f16" and ours[0]["settings"]["k_repack"] == "auto"
    ident = {b["name"]: b["identity"] for b in builds}
    assert ident["ext"]["sha256"] and ident["ext"]["path"] == str(Path(sys.executable).resolve())
    assert ident["ext"]["argv"] == ENGINE_ARGV and ident["ours"]["git_commit"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert os.path.isfile(html) and "## Builds (run 1): ours vs ext" in md
    section = md.split("## Builds (run 1): ours vs ext")[1]
    assert "| N_KV (PP) | A (ext) t/s | n | B (ours) t/s | n | B/A | 95% interval |" in section
    assert section.count("\n| 0 |") >= 2 and section.count("\n| 32 |") >= 2  # PP and TG rows per N_KV


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, label TEXT, source TEXT NOT NULL, status TEXT NOT NULL,
    settings_json TEXT NOT NULL, spec_json TEXT, meta_json TEXT, version TEXT, git_commit TEXT, source_file TEXT,
    content_hash TEXT UNIQUE, started_at TEXT NOT NULL, finished_at TEXT, note TEXT);
CREATE TABLE hosts (id INTEGER PRIMARY KEY, fingerprint TEXT UNIQUE, name TEXT, profile_json TEXT,
    simulated INTEGER NOT NULL DEFAULT 0, first_seen TEXT NOT NULL);
CREATE TABLE points (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),
    host_id INTEGER REFERENCES hosts(id), slot TEXT, placement_json TEXT, settings_json TEXT NOT NULL,
    settings_key TEXT NOT NULL, rep INTEGER NOT NULL, n_kv INTEGER NOT NULL, pp INTEGER NOT NULL, tg INTEGER NOT NULL,
    t_pp REAL NOT NULL, speed_pp REAL NOT NULL, t_tg REAL NOT NULL, speed_tg REAL NOT NULL, rss_hwm_mib REAL,
    repack_scratch_mib REAL, verified_cpus TEXT, verified_mems TEXT, noise REAL,
    simulated INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
CREATE UNIQUE INDEX points_identity ON points
    (run_id, COALESCE(host_id, -1), COALESCE(slot, ''), settings_key, rep, n_kv, pp, tg);
INSERT INTO schema_version VALUES (1);
INSERT INTO runs VALUES (1, 'measured', 'numasweep', 'ok', '{}', NULL, NULL, NULL, NULL, NULL, NULL, 't', 't', NULL);
INSERT INTO runs VALUES (2, 'imported', 'ik-sweep-bench', 'ok', '{}', NULL, NULL, NULL, NULL, 'x.log', 'h', 't', 't', NULL);
"""


def test_v1_store_is_migrated_by_name_and_keeps_every_point(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    rows = [(1, {"n_ctx": 1024, "ubatch": 256, "batch": 2048, "flash_attn": True, "fused_moe": False, "mla": 0,
                 "backend": "builtin", "model": "tiny-seed0", "threads": 2}, 0),
            (1, {"n_ctx": 1024, "ubatch": 256, "batch": 2048, "flash_attn": True, "fused_moe": False, "mla": 0,
                 "backend": "builtin", "model": "tiny-seed0", "threads": 2}, 1),
            (2, {"n_ctx": 32768, "ubatch": 512, "flash_attn": 1, "threads": 88}, 0)]
    for i, (run, settings, rep) in enumerate(rows):
        sj = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        conn.execute("INSERT INTO points (run_id, settings_json, settings_key, rep, n_kv, pp, tg, t_pp, speed_pp,"
                     " t_tg, speed_tg, created_at) VALUES (?, ?, ?, ?, 0, 256, 64, 1, 256, 1, 64, 't')",
                     (run, sj, f"old{i}", rep))
    conn.commit()
    conn.close()
    with Store.open(path) as store:
        measured, imported = store.points(1), store.points(2)
    assert len(measured) == 2 and len(imported) == 1
    m = measured[0]
    assert m["build"] == "builtin" and m["build_id"] is None and "backend" not in m["settings"]
    assert m["settings"] == {"c": 1024, "ub": 256, "b": 2048, "flash_attn": True, "fmoe": False, "mla": 0,
                             "model": "tiny-seed0", "threads": 2}
    assert m["settings_key"] == measured[1]["settings_key"] != "old0"
    assert imported[0]["build"] is None and imported[0]["settings"] == {"c": 32768, "ub": 512, "flash_attn": True,
                                                                       "threads": 88}
    v = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone()[0]
    assert v == 2
