"""export --format sweep-bench-md / llama-bench-sqlite, read back the way ik's and llama.cpp's scripts read them.

The readers below re-implement what the scripts do with the files (as their sources and
READMEs document it), not their code:
- ik_llama.cpp examples/sweep-bench/sweep-bench-plot.py: each file is a markdown table,
  split on ``\\s*\\|\\s*``; line 1 is the header, line 2 (the rule) is skipped, every
  other line is a row; the first and last (empty) columns are dropped; ``N_KV``,
  ``S_PP t/s``, ``S_TG t/s`` must be numeric; the file name is the series label; rows
  with the same N_KV are averaged (sd as error bar).
- llama.cpp scripts/compare-llama-bench.py (mainline): a SQLite file with a *table*
  ``llama_bench``; baseline and compare rows are joined on equality of every key
  property (n_depth included) and AVG(avg_ts) is taken per (n_gen, n_prompt, n_depth).
- ik_llama.cpp's copy of that script: table ``test``, its own key properties (no
  n_depth), AVG(avg_ts) per (n_gen, n_prompt).
"""
from __future__ import annotations

import math
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict

import pytest

from orchestrator.export_peers import safe_name, write_llama_bench_sqlite, write_sweep_bench_md
from orchestrator.store import Point, Store

MAINLINE_KEYS = [
    "cpu_info", "gpu_info", "backends", "n_gpu_layers", "tensor_buft_overrides", "model_filename", "model_type",
    "n_batch", "n_ubatch", "embeddings", "cpu_mask", "cpu_strict", "poll", "n_threads", "type_k", "type_v",
    "use_mmap", "no_kv_offload", "split_mode", "main_gpu", "tensor_split", "flash_attn", "n_prompt", "n_gen", "n_depth"]
IK_KEYS = [
    "cpu_info", "gpu_info", "n_gpu_layers", "cuda", "vulkan", "metal", "sycl", "rpc", "gpu_blas", "blas",
    "model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_ubatch", "embeddings", "n_threads",
    "type_k", "type_v", "use_mmap", "no_kv_offload", "split_mode", "main_gpu", "tensor_split", "flash_attn",
    "n_prompt", "n_gen"]

# speed per (build, k_repack): build B is 10% faster in PP; k_repack=on 20% faster in PP
PP = {("aaaa1111", "off"): 100.0, ("aaaa1111", "on"): 120.0, ("bbbb2222", "off"): 110.0, ("bbbb2222", "on"): 132.0}
TG = 20.0


def _fill(store: Store) -> None:
    import hostprofiles

    prof = hostprofiles.load_profile("xeon-6980p-2s-snc-off")
    host = store.upsert_host(fingerprint=prof.fingerprint, profile=prof.to_json(), name="xeon")
    for commit in ("aaaa1111", "bbbb2222"):
        run = store.create_run(settings={}, label=f"build {commit}", git_commit=commit + "c0ffee" * 4)
        for k_repack in ("off", "on"):
            for rep in range(2):
                for n_kv in (0, 512):
                    spp = PP[(commit, k_repack)] * (1 - n_kv / 4096) * (1 + 0.01 * rep)
                    stg = TG * (1 - n_kv / 8192) * (1 - 0.01 * rep)
                    store.add_point(run, Point(
                        n_kv=n_kv, pp=512, tg=128, t_pp=512 / spp, speed_pp=spp, t_tg=128 / stg, speed_tg=stg,
                        rep=rep, host_id=host, slot="node0", verified_cpus="0-3",
                        settings={"model": "tiny", "threads": 4, "threads_batch": 4, "type_k": "q8_0",
                                  "type_v": "f16", "flash_attn": True, "k_repack": k_repack, "ubatch": 512,
                                  "batch": 2048, "seed": 0}))
        store.finish_run(run, "ok")


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "s.db")
    _fill(s)
    yield s
    s.close()


# -- sweep-bench-plot.py's reading ---------------------------------------------------------
def read_like_sweep_bench_plot(path) -> dict[int, tuple[float, float, float, float]]:
    """{n_kv: (mean S_PP, sd S_PP, mean S_TG, sd S_TG)} as the plot script computes them."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    split = [re.split(r"\s*\|\s*", line) for line in lines]
    header = [c.strip() for c in split[0][1:-1]]
    rows = []
    for cells in split[2:]:                       # skiprows=[1]: the rule line
        assert len(cells) == len(split[0]), cells
        rows.append(dict(zip(header, cells[1:-1])))
    grouped = defaultdict(list)
    for r in rows:
        grouped[int(float(r["N_KV"]))].append((float(r["S_PP t/s"]), float(r["S_TG t/s"])))

    def mean_sd(v):
        m = sum(v) / len(v)
        return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)
    return {n: (*mean_sd([a for a, _ in v]), *mean_sd([b for _, b in v])) for n, v in grouped.items()}


def test_sweep_bench_md_one_table_per_series(store, tmp_path):
    files, notes = write_sweep_bench_md(store, tmp_path / "md")
    assert notes == []
    names = sorted(f.name for f in files)
    assert names == ["build_aaaa1111_k_repack_off.md", "build_aaaa1111_k_repack_on.md",
                     "build_bbbb2222_k_repack_off.md", "build_bbbb2222_k_repack_on.md"]
    from engine.sweep import TABLE_HEADER
    text = (tmp_path / "md" / "build_bbbb2222_k_repack_on.md").read_text()
    assert text.splitlines()[0] == TABLE_HEADER and len(text.splitlines()) == 2 + 4  # 2 N_KV x 2 reps
    got = read_like_sweep_bench_plot(tmp_path / "md" / "build_bbbb2222_k_repack_on.md")
    assert sorted(got) == [0, 512]
    assert got[0][0] == pytest.approx(132.0 * 1.005, abs=0.01)        # mean of 132.00 and 133.32
    assert got[0][1] == pytest.approx(math.sqrt(2) / 2 * 1.32, abs=0.01)
    assert got[512][2] == pytest.approx(TG * (1 - 512 / 8192) * 0.995, abs=0.01)
    one_run, _ = write_sweep_bench_md(store, tmp_path / "one", run_id=1)
    assert sorted(f.name for f in one_run) == ["k_repack_off.md", "k_repack_on.md"]


def test_safe_name():
    assert safe_name("run 3 xeon/node0 k_repack=on (simulated)") == "run_3_xeon_node0_k_repack_on__simulated_"
    assert safe_name("../..") == "_" and safe_name("..") == "series" and safe_name("a.b-c_d") == "a.b-c_d"


# -- compare-llama-bench.py's reading ------------------------------------------------------
def compare_like_mainline(db, baseline, compare):
    con = sqlite3.connect(db)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert "llama_bench" in tables
    cols = {r[1] for r in con.execute("PRAGMA table_info(llama_bench)")}
    assert set(MAINLINE_KEYS) | {"build_commit", "test_time", "avg_ts"} <= cols
    builds = {r[0] for r in con.execute("SELECT DISTINCT build_commit FROM llama_bench")}
    assert baseline in builds and compare in builds
    on = " AND ".join(f"a.{k} = b.{k}" for k in MAINLINE_KEYS)
    rows = con.execute(f"SELECT a.model_type, a.n_prompt, a.n_gen, a.n_depth, AVG(a.avg_ts), AVG(b.avg_ts) "
                       f"FROM llama_bench a JOIN llama_bench b ON {on} AND a.build_commit = ? AND b.build_commit = ? "
                       f"GROUP BY a.model_type, a.n_gen, a.n_prompt, a.n_depth", (baseline, compare)).fetchall()
    con.close()
    return rows


def compare_like_ik(db, baseline, compare):
    con = sqlite3.connect(db)
    builds = {r[0] for r in con.execute("SELECT DISTINCT build_commit FROM test")}
    assert baseline in builds and compare in builds
    on = " AND ".join(f"a.{k} = b.{k}" for k in IK_KEYS)
    rows = con.execute(f"SELECT a.model_type, a.n_prompt, a.n_gen, AVG(a.avg_ts), AVG(b.avg_ts) "
                       f"FROM test a JOIN test b ON {on} AND a.build_commit = ? AND b.build_commit = ? "
                       f"GROUP BY a.model_type, a.n_gen, a.n_prompt", (baseline, compare)).fetchall()
    con.close()
    return rows


def test_llama_bench_sqlite_compares_two_builds(store, tmp_path):
    db = tmp_path / "llama-bench.sqlite"
    n = write_llama_bench_sqlite(store, db)
    assert n == 2 * 2 * 2 * 2  # builds x k_repack x phases x N_KV (repetitions pooled)
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    nulls = [k for k in set(MAINLINE_KEYS + IK_KEYS)
             if con.execute(f"SELECT COUNT(*) FROM llama_bench WHERE {k} IS NULL").fetchone()[0]]
    assert nulls == []                                  # NULL never joins: every key column is filled
    r = con.execute("SELECT * FROM llama_bench WHERE build_commit='aaaa1111' AND n_prompt=512 AND n_depth=512 "
                    "AND model_type LIKE '%k_repack=on%'").fetchone()
    con.close()
    assert r["n_gen"] == 0 and r["n_ubatch"] == 512 and r["n_threads"] == 4 and r["type_k"] == "q8_0"
    assert r["flash_attn"] == 1 and r["cpu_mask"] == "0xf" and r["cpu_info"] and r["backends"] == "CPU"
    expect = 120.0 * (1 - 512 / 4096)
    assert r["avg_ts"] == pytest.approx(expect * 1.005)
    assert r["stddev_ts"] == pytest.approx(expect * 0.01 / math.sqrt(2))
    assert r["avg_ns"] == pytest.approx(512 / (expect * 1.005) * 1e9, rel=1e-3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["test_time"])

    rows = compare_like_mainline(db, "aaaa1111", "bbbb2222")
    assert len(rows) == 2 * 2 * 2                       # k_repack x phases x N_KV: no cross-setting pairs
    for model_type, n_prompt, n_gen, n_depth, a, b in rows:
        if n_prompt:
            assert b / a == pytest.approx(1.10)           # B is 10% faster in PP at every depth and setting
        else:
            assert n_gen == 128 and b / a == pytest.approx(1.0)
        assert model_type in ("tiny [k_repack=off]", "tiny [k_repack=on]")
        k_repack = model_type[len("tiny [k_repack="):-1]
        depth = 1 - n_depth / (4096 if n_prompt else 8192)
        # each side is its own setting's numbers: pairing on with off would average them
        assert a == pytest.approx((PP[("aaaa1111", k_repack)] * 1.005 if n_prompt else TG * 0.995) * depth)
    ik_rows = compare_like_ik(db, "aaaa1111", "bbbb2222")
    assert len(ik_rows) == 2 * 2                        # ik's script pools depths
    assert all((b / a == pytest.approx(1.10)) if n_prompt else (b / a == pytest.approx(1.0))
               for _, n_prompt, _, a, b in ik_rows)


def test_export_cli(store, tmp_path):
    def export(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator", "export", "--store", str(tmp_path / "s.db"),
                               *args], capture_output=True, text=True, timeout=120)
    res = export("--format", "llama-bench-sqlite", "-o", str(tmp_path / "x.sqlite"))
    assert res.returncode == 0, res.stderr
    assert "wrote 16 llama-bench test row(s)" in res.stdout
    again = export("--format", "llama-bench-sqlite", "-o", str(tmp_path / "x.sqlite"))
    assert again.returncode == 2 and "exists" in again.stderr
    res = export("--format", "sweep-bench-md", "-o", str(tmp_path / "tables"), "--run", "2")
    assert res.returncode == 0 and "wrote 2 sweep-bench table(s)" in res.stdout, res.stderr
    bad = export("--format", "sweep-bench-md")
    assert bad.returncode == 2 and bad.stderr.strip().endswith("give -o DIR")
