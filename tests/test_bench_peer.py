"""bench/peer.py's plumbing (not its timings): --ik-bin checks, ours' sweep through the
engine CLI read back by the sweep-bench parser, and the ratio table. No ik binary needed."""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

PEER = Path(__file__).resolve().parents[1] / "bench" / "peer.py"


def _peer():
    spec = importlib.util.spec_from_file_location("bench_peer", PEER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_peer"] = mod     # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_bad_ik_bin_is_one_line_exit_2_before_anything_runs(tmp_path):
    model = tmp_path / "never-made.gguf"
    p = subprocess.run([sys.executable, str(PEER), "--ik-bin", str(tmp_path), "--model", str(model), "--no-bw"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"--ik-bin: {tmp_path}: no executable llama-sweep-bench")
    assert p.stdout == "" and not model.exists()


def test_ik_bin_identity_and_argv(tmp_path):
    peer = _peer()
    exe = tmp_path / "llama-sweep-bench"
    exe.write_bytes(b"#!/bin/sh\necho 'version: 1 (abc)'\n")
    exe.chmod(0o755)
    for arg in (tmp_path, exe):                      # the directory or the binary itself
        ik = peer.NativeIk.find(str(arg))
        assert ik.path == exe
        assert ik.sha256 == hashlib.sha256(exe.read_bytes()).hexdigest()
        assert ik.version == "version: 1 (abc)"
    args = peer._args(["-c", "1536", "-ub", "512", "-n", "64", "-t", "2", "-fa", "-ctk", "q8_0", "-ctv", "q8_0"])
    argv = ik.argv(args, Path("/m.gguf"))
    assert argv[0] == str(exe)
    flat = " ".join(argv[1:])
    # ik fuses MoE by default: unfused on both unless -fmoe
    assert "-m /m.gguf -c 1536 -ub 512 -b 2048 -t 2 -tb 2 -ctk q8_0 -ctv q8_0 -n 64 -no-fmoe -fa on" in flat
    assert flat.endswith("--no-mmap -wb --output-format jsonl")
    ours = peer._ours_argv(args, Path("/m.gguf"))
    assert ours[1:4] == ["-m", "engine", "bench"] and ours[-2:] == ["--output-format", "jsonl"]
    assert "-fmoe" not in ours and "-mla" not in ours
    # the seed's DeepSeek flags reach both engines
    args = peer._args(["-c", "1024", "-t", "2", "-fa", "-ctk", "q8_0", "-mla", "3", "-fmoe", "-amb", "1024"])
    flat = " ".join(ik.argv(args, Path("/m.gguf")))
    assert "-ctk q8_0 -ctv f16 -mla 3 -amb 1024 -fa on" in flat and "fmoe" not in flat
    ours = " ".join(peer._ours_argv(args, Path("/m.gguf")))
    assert "-mla 3 -amb 1024 -fmoe -fa on" in ours


def test_ours_sweep_parsed_from_the_engine_cli(micro_model):
    peer = _peer()
    args = peer._args(["--model", str(micro_model), "-c", "64", "-ub", "32", "-n", "4", "-t", "1", "-fa"])
    run = peer.run_sweep(peer._ours_argv(args, Path(micro_model)))
    assert run.error == ""
    assert [r["n_kv"] for r in run.rows] == [0, 32]
    assert all(r["pp"] == 32 and r["tg"] == 4 and r["speed_pp"] > 0 and r["speed_tg"] > 0 for r in run.rows)
    assert any(line.startswith("engine:") and "simd=" in line for line in run.info)


def test_summarise_medians_spread_and_ratio():
    peer = _peer()
    row = lambda kv, pp, tg: {"n_kv": kv, "speed_pp": pp, "speed_tg": tg}
    runs = {"ours": [[row(0, 10.0, 4.0)], [row(0, 12.0, 5.0)], [row(0, 11.0, 6.0)]],
            "ik": [[row(0, 20.0, 5.0), row(512, 18.0, 5.0)]]}
    lines = peer.summarise(runs)
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "0" and cells[1] == "11.00" and cells[2] == "18"    # median 11, (12-10)/11
    assert cells[3] == "20.00" and cells[5] == "0.55" and cells[10] == "1.00"
    assert lines[3].split("|")[2].strip() == "-"                           # ours has no N_KV 512 row
