"""The sweep-bench loop: row schedule, formats (same as ik's), repetitions, stride."""
import json
import re
import subprocess
import sys

import pytest

from engine import load_model
from engine.sweep import TABLE_HEADER, TABLE_RULE, SweepConfig, jsonl_record, sweep

IK_KEYS = ["n_kv_max", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_threads", "n_threads_batch",
           "pp", "tg", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "rss_hwm_mib"]
OUR_KEYS = ["type_k", "type_v", "k_repack", "repack_scratch_mib", "rep", "weight_bytes"]


def test_table_header_matches_ik_exactly():
    # copied from the real ik_llama.cpp log in shared/fixtures
    assert TABLE_HEADER == "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |"
    assert TABLE_RULE == "|-------|--------|--------|----------|----------|----------|----------|"


def test_rows_schedule_and_records(micro_model):
    m = load_model(micro_model, n_ctx=64, type_k="q8_0", type_v="q8_0")
    cfg = SweepConfig(n_ctx=64, n_ubatch=16, n_batch=64)
    rows = list(sweep(m, cfg))
    assert [r.n_kv for r in rows] == [0, 16, 32, 48]
    assert all(r.pp == 16 and r.tg == 4 and r.t_pp > 0 and r.t_tg > 0 for r in rows)
    assert all(abs(r.speed_pp - 16 / r.t_pp) < 1e-9 for r in rows)
    assert m.n_past == 64  # the last row's PP filled the cache to n_ctx
    rec = jsonl_record(m, cfg, rows[0])
    assert list(rec)[:len(IK_KEYS)] == IK_KEYS
    assert set(OUR_KEYS) <= set(rec)
    assert rec["type_k"] == "q8_0" and rec["n_kv_max"] == 64 and rec["weight_bytes"] > 0
    line = rows[1].table_line()
    assert re.fullmatch(r"\|\s+16 \|\s+4 \|\s+16 \|\s+\d+\.\d{3} \|\s+\d+\.\d{2} \|\s+\d+\.\d{3} \|\s+\d+\.\d{2} \|", line)


def test_repetitions_stride_and_n(micro_model):
    m = load_model(micro_model, n_ctx=64)
    rows = list(sweep(m, SweepConfig(n_ctx=64, n_ubatch=16, n_gen=3, nrep=2, stride=2)))
    assert [(r.n_kv, r.rep, r.tg) for r in rows] == [(0, 0, 3), (0, 1, 3), (32, 0, 3), (32, 1, 3)]
    assert m.n_past == 64  # skipped rows still ran their PP


def _cli(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "orchestrator", "bench"] + args,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_md_output_parses_like_ik_log(micro_model):
    from orchestrator.importers import parse_sweep_bench_text

    p = _cli(["-m", str(micro_model), "-c", "64", "-ub", "16", "-fa", "-ctk", "q8_0", "-ctv", "q8_0",
              "-t", "1", "-tb", "2"])
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert TABLE_HEADER in out and "main: n_kv_max = 64, n_batch = 2048, n_ubatch = 16, flash_attn = 1" in out
    assert "n_threads = 1, n_threads_batch = 2" in out
    parsed = parse_sweep_bench_text(out)
    assert [int(r["n_kv"]) for r in parsed.rows] == [0, 16, 32, 48]


def test_cli_jsonl_rows_on_stdout_header_on_stderr(micro_model):
    p = _cli(["-m", str(micro_model), "-c", "32", "-ub", "16", "-n", "2", "--output-format", "jsonl",
              "-nrep", "2", "--seed", "7"])
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.strip().splitlines()]
    assert [(r["n_kv"], r["rep"]) for r in rows] == [(0, 0), (0, 1), (16, 0), (16, 1)]
    assert all(set(IK_KEYS + OUR_KEYS) <= set(r) for r in rows)
    assert rows[0]["flash_attn"] is True and rows[0]["tg"] == 2  # flash attention on by default, like ik
    assert "main: n_kv_max = 32" in p.stderr
    # the echo: every engine.options setting, as applied, under its schema name
    from engine.options import SETTINGS
    assert {s.name for s in SETTINGS} - {"tg"} <= set(rows[0])
    assert (rows[0]["c"], rows[0]["ub"], rows[0]["seed"], rows[0]["nrep"], rows[0]["mla"]) == (32, 16, 7, 2, 0)


def test_cli_c_equal_ub_gives_one_row_and_help_works(micro_model):
    p = _cli(["-m", str(micro_model), "-c", "16", "-ub", "16", "--output-format", "jsonl"])
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["n_kv"] for line in p.stdout.strip().splitlines()] == [0]
    h = _cli(["--help"])
    assert h.returncode == 0 and "--k-repack" in h.stdout and "K rows % 8 == 0" in h.stdout


@pytest.mark.parametrize("flag", [["-ngl", "99"], ["-ot", "exps=CPU"], ["-nkvo"], ["--mmap", "0"]])
def test_cli_unsupported_ik_flags_are_one_line(micro_model, flag):
    p = _cli(["-m", str(micro_model), "-c", "16", "-ub", "16"] + flag)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{flag[0]}: not supported by the numasweep engine" in p.stderr.strip().splitlines()[-1]


def test_make_model_cli(tmp_path):
    from engine import load_model as lm

    out = tmp_path / "t.gguf"
    p = subprocess.run([sys.executable, "-m", "engine", "make-model", "--shape", "micro", "--layers", "3",
                        "--vocab", "300", "--seed", "9", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    m = lm(out, n_ctx=32)
    assert (m.config.n_layer, m.config.n_vocab) == (3, 300)
    bad = subprocess.run([sys.executable, "-m", "engine", "make-model", "--shape", "huge", "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown shape 'huge'" in bad.stderr


def test_make_model_is_deterministic(tmp_path):
    from engine import make_model

    a = make_model(tmp_path / "a.gguf", "micro", seed=4).read_bytes()
    b = make_model(tmp_path / "b.gguf", "micro", seed=4).read_bytes()
    c = make_model(tmp_path / "c.gguf", "micro", seed=5).read_bytes()
    assert a == b and a != c
