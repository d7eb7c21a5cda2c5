"""Importers on the real ik sweep-bench log and on llama-bench samples in every format."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.errors import ImportFormatError
from orchestrator.importers import parse_file, parse_sweep_bench_text, parse_text
from orchestrator.importers.ingest import import_file, import_files
from orchestrator.store import Store

FIX = Path(__file__).parent / "fixtures"
IK_LOG = FIX / "ik-sweep-bench-xeon6980p-q8_0-32k.log"


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "r.db")
    yield s
    s.close()


def test_real_ik_sweep_bench_log():
    p = parse_file(IK_LOG)
    assert p.source == "ik-sweep-bench" and len(p.rows) == 64
    first, last = p.rows[0], p.rows[-1]
    assert (first["pp"], first["tg"], first["n_kv"], first["t_pp"], first["speed_pp"]) == (512, 128, 0, 4.785, 107.01)
    assert (last["n_kv"], last["speed_tg"]) == (32256, 4.38)
    assert p.settings["threads"] == 88 and p.settings["threads_batch"] == 128 and p.settings["c"] == 32768
    assert p.settings["type_k"] == "q8_0" and p.settings["flash_attn"] is True and p.settings["mla"] == 3
    assert p.meta["model"]["arch"] == "deepseek2" and p.meta["model"]["name"] == "DeepSeek V3 0324"
    assert p.meta["model"]["n_ctx_train"] == 163840 and p.meta["model"]["ftype"].startswith("IQ3_K")
    assert p.meta["host_state"] == {"power_profile": "performance", "thp_enabled": "always",
                                    "thp_defrag": "always", "numa_balancing": 0}
    assert p.meta["numactl"] == {"cpunodebind": "0", "membind": "0"}
    assert "--threads-batch 128" in p.meta["command"]


def test_sweep_bench_text_never_crashes_on_bytes(tmp_path):
    raw = IK_LOG.read_bytes().replace(b"Current power", b"\xff\xfe\x80 Current power", 1) + b"\xc3\x28\n"
    bad = tmp_path / "mangled.log"
    bad.write_bytes(raw)
    assert len(parse_file(bad).rows) == 64


def test_sweep_bench_jsonl_and_mixed_log_lines():
    p = parse_file(FIX / "sweep-bench-tiny.jsonl")
    assert p.source == "sweep-bench-jsonl" and len(p.rows) == 8
    assert {r["rep"] for r in p.rows} == {0, 1}
    pts = p.points()
    assert pts[1].repack_scratch_mib > 0 and pts[0].settings["k_repack"] == "auto"
    # Worker use: stderr noise around JSONL rows, no file.
    text = "loading model...\n" + (FIX / "sweep-bench-tiny.jsonl").read_text() + "done\n"
    assert len(parse_sweep_bench_text(text).rows) == 8


def test_repeated_table_rows_get_rep_numbers():
    table = "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |\n|---|---|---|---|---|---|---|\n"
    row = "|   512 |    128 |      0 |    4.785 |   107.01 |   12.241 |    10.46 |\n"
    p = parse_sweep_bench_text(table + row + row + row.replace("|      0 |", "|    512 |"))
    assert [r["rep"] for r in p.rows] == [0, 1, 0]


def test_bad_table_row_names_file_and_line(tmp_path):
    lines = IK_LOG.read_text(encoding="utf-8", errors="replace").splitlines()
    idx = next(i for i, l in enumerate(lines) if l.startswith("|   512 |    128 |   1024 |"))
    lines[idx] = "|   512 |    128 |   1024 |    5.579 |   oops |   13.024 |     9.83 |"
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines))
    with pytest.raises(ImportFormatError, match=rf"bad\.log:{idx + 1}: .*not numeric"):
        parse_file(bad)


@pytest.mark.parametrize("fmt", ["md", "csv", "json", "jsonl", "sql"])
def test_mainline_llama_bench_formats(fmt):
    p = parse_file(FIX / f"llama-bench-cpu.{fmt}")
    assert p.source == "llama-bench" and p.meta.get("format", fmt) == fmt
    reps = 3 if fmt in ("json", "jsonl") else 1  # samples_ns only in json/jsonl
    assert len(p.rows) == 4 * reps
    pp_d1024 = [r for r in p.rows if r["pp"] == 512 and r["n_kv"] == 1024]
    tg_d0 = [r for r in p.rows if r["tg"] == 128 and r["n_kv"] == 0]
    assert len(pp_d1024) == reps and len(tg_d0) == reps
    assert all(r["tg"] == 0 and r["speed_tg"] == 0 for r in pp_d1024)
    mean_pp = sum(r["speed_pp"] for r in pp_d1024) / reps
    assert mean_pp == pytest.approx(116.60, abs=0.02)
    assert p.settings["threads"] == 2
    p.points()  # every row is a valid Point


@pytest.mark.parametrize("fmt", ["md", "sql", "json"])
def test_ik_llama_bench(fmt):
    p = parse_file(FIX / f"ik-llama-bench.{fmt}")
    assert p.source == "ik-llama-bench"
    assert p.meta["skipped_tests"] == ["pp512+tg128"]
    gp = [r for r in p.rows if r["n_kv"] == 512]
    reps = 3 if fmt == "json" else 1
    assert len(gp) == reps and gp[0]["tg"] == 128 and gp[0]["pp"] == 0
    assert sum(r["speed_tg"] for r in gp) / reps == pytest.approx(32.06, abs=0.01)
    assert p.settings["mla"] == 3


def test_unknown_and_empty_files_are_refused(tmp_path):
    (tmp_path / "x.txt").write_text("hello world\n")
    with pytest.raises(ImportFormatError, match=r"x\.txt: unrecognised format"):
        parse_file(tmp_path / "x.txt")
    (tmp_path / "e.log").write_text("")
    with pytest.raises(ImportFormatError, match="e.log: empty"):
        parse_file(tmp_path / "e.log")
    with pytest.raises(ImportFormatError, match="cannot read"):
        parse_file(tmp_path / "missing.log")


def test_bad_json_and_sql_name_the_line(tmp_path):
    text = (FIX / "llama-bench-cpu.jsonl").read_text().splitlines()
    text[2] = text[2][:-5]
    (tmp_path / "b.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(ImportFormatError, match=r"b\.jsonl:3: "):
        parse_file(tmp_path / "b.jsonl")
    sql = (FIX / "llama-bench-cpu.sql").read_text() + "ATTACH DATABASE '/tmp/evil.db' AS evil;\n"
    (tmp_path / "evil.sql").write_text(sql)
    with pytest.raises(ImportFormatError, match=r"evil\.sql:\d+: SQL statement refused"):
        parse_file(tmp_path / "evil.sql")
    assert not Path("/tmp/evil.db").exists()


def test_import_is_one_transaction_and_idempotent(store, tmp_path):
    res = import_file(store, IK_LOG, label="seed")
    assert (res.n_points, res.duplicate, res.source) == (64, False, "ik-sweep-bench")
    run = store.run(res.run_id)
    assert run["label"] == "seed" and run["status"] == "ok" and run["meta"]["model"]["arch"] == "deepseek2"
    # Same bytes under another name: no new run, no new points.
    copy = tmp_path / "copy.log"
    shutil.copy(IK_LOG, copy)
    again = import_file(store, copy)
    assert again.duplicate and again.run_id == res.run_id and store.count_points() == 64
    # A batch with one bad file writes nothing at all.
    bad = tmp_path / "bad.csv"
    bad.write_text((FIX / "llama-bench-cpu.csv").read_text().replace('"141.879010"', '"x"') + '"only","three","cols"\n')
    with pytest.raises(ImportFormatError, match="bad.csv"):
        import_files(store, [FIX / "llama-bench-cpu.json", bad])
    assert len(store.runs()) == 1 and store.count_points() == 64
    assert import_file(store, FIX / "llama-bench-cpu.json").n_points == 12
    # The same file named twice in one command is imported once.
    twice = import_files(store, [FIX / "llama-bench-cpu.csv", FIX / "llama-bench-cpu.csv"])
    assert [r.duplicate for r in twice] == [False, True] and twice[0].run_id == twice[1].run_id
